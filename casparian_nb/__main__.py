"""``python -m casparian_nb`` is the ``casparian`` command."""

import sys

from .cli import main

sys.exit(main())
