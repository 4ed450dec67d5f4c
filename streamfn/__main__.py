"""``python -m streamfn``: the same as the ``streamfn`` command."""

import sys

from .cli import main

sys.exit(main())
