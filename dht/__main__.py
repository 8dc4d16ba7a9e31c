"""``python -m dht``: the ``dht`` command line (``dht.cli``)."""

from .cli import main

raise SystemExit(main())
