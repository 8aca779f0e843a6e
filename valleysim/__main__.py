"""``python -m valleysim ...``: the same as the ``valleysim`` command."""

import sys

from valleysim.cli import main

sys.exit(main())
