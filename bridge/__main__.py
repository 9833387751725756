"""``python -m bridge``: the same as the ``streambridge`` command."""

import sys

from bridge.cli import main

sys.exit(main())
