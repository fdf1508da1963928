"""``python -m medcnncad`` (and ``PythonSlicer -m medcnncad`` inside Slicer): the command line."""

import sys

from medcnncad.cli.app import process_main

sys.exit(process_main())
