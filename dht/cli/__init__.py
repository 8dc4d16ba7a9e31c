"""The ``dht`` command line, also ``python -m dht``: ``dht node`` runs a
node, ``dht put`` and ``dht get`` store and find a value through a network,
``dht demo`` runs a local network and measures it.

One module per concern: ``options`` (the parsers; options that set a
``Config`` field take their help from that field's documentation in
``dht/config.py``), ``common`` (building and starting a node, keys, errors),
``serve`` (``dht node``), ``client`` (``put`` and ``get``), ``demo`` and
``terminal`` (progress and summary lines). Standard library only.

Exit status: 0 done (stored, found); 1 failed (not found, not stored, no
bootstrap node answered, the port in use); 2 bad usage (a malformed address,
a bad ttl, a value over the size limit); 130 interrupted. Errors are one
line on stderr, never a traceback.
"""

from .main import main

__all__ = ["main"]
