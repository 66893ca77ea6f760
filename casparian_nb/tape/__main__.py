"""``python -m casparian_nb.tape explain|validate FILE [--format text|json]``."""

from .cli import main

raise SystemExit(main())
