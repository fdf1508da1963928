"""``python -m medcnncad`` (and ``PythonSlicer -m medcnncad`` inside Slicer): the command line."""

import sys

from medcnncad.cli.app import main

sys.exit(main())
