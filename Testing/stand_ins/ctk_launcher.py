"""A stand-in for CTK's AppLauncher (Slicer's ``PythonSlicer``), for tests of the worker client.

Like the real launcher (commontk/AppLauncher ``ctkAppLauncher::runProcess``: QProcess in
ForwardedChannels mode, no signal forwarding, no setsid/job object), it starts the real
interpreter as a *child* process that inherits stdin/stdout/stderr, waits for it and exits
with its code. Killing this process alone therefore leaves the child running, as in Slicer.

What it cannot show: the launcher's environment set-up (``[Paths]``/``[LibraryPaths]``) and
Windows console behaviour.
"""

import subprocess
import sys

if __name__ == "__main__":
    child = subprocess.Popen([sys.executable, *sys.argv[1:]])
    sys.exit(child.wait())
