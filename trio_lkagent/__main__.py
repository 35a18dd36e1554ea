"""``python -m trio_lkagent``: the ``trio-lkagent`` command line."""

from ._cli import main

raise SystemExit(main())
