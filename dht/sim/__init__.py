"""A discrete-event simulator of whole networks of the library's own core.

Thousands of nodes, each an ``Engine`` fed through a ``Receiver`` (the one
receive pipeline a listener thread uses), run in one thread on virtual time
over an in-memory network with one address per node, per-pair latency,
loss and churn. No sockets, no threads, no wall clock: a run depends on
its seed alone. ``python -m dht.sim --help`` runs a scenario and reports.

Modules: ``clock`` (virtual time), ``events`` (the event queue; the
engines' timers), ``latency`` (delay models), ``addresses`` (one IP per
node), ``network`` (datagrams in flight, loss), ``node`` (an engine wired
as a real node), ``churn`` (sessions), ``population`` (joins and leaves),
``trace`` (what lookups cost), ``scenario`` (a whole run), ``report``.
"""
