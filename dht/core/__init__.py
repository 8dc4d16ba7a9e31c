"""The core layer: routing table, storage, lookups, pending requests, timers and
the protocol engine. No sockets, no threads started, no clock or randomness of
its own: time and ids are passed in, so tests can drive many nodes in one
thread with virtual time."""
