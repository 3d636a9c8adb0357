"""``python -m smcheck``: the same entry point as the ``smcheck`` script (see smcheck._entry)."""

from ._entry import main

raise SystemExit(main())
