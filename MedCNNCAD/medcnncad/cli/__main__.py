"""``python -m medcnncad.cli``: the command line."""

import sys

from medcnncad.cli.app import process_main

sys.exit(process_main())
