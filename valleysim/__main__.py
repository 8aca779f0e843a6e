"""``python -m valleysim ...``: the same as the ``valleysim`` command. Ctrl-C and SIGTERM wait from here
until the command's handlers are in place and its libraries have loaded (``valleysim.cli``)."""

import signal
import sys

signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})

from valleysim.cli import main  # noqa: E402

sys.exit(main())
