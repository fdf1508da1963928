"""``python -m medcnncad.cli``: the command line."""

import sys

from medcnncad.cli.app import main

sys.exit(main())
