"""``dht put`` and ``dht get``: join through ``--bootstrap``, act, print, exit.

The command's own node joins the network for the one operation and closes
after it. Exit 0 when stored or found, 1 when not; arguments are checked
before joining (a value over the size limit, a ttl over ``max_ttl``).
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import Future
from typing import TypeVar

from ..config import Config
from ..errors import NotFoundError, StoreError, TTLTooLong, ValueTooLarge
from ..node import FirstValue
from ..wire.events import MAX_VALUE_SIZE
from .common import CommandError, node_config, parse_key, say, start_node

T = TypeVar("T")


def put(args: argparse.Namespace) -> int:
    key = parse_key(args.key)
    value = _value(args.value)
    if len(value) > MAX_VALUE_SIZE:
        raise ValueTooLarge(len(value), MAX_VALUE_SIZE)
    cfg = node_config(args)
    if args.ttl > cfg.max_ttl:
        raise TTLTooLong(args.ttl, cfg.max_ttl)
    with start_node(cfg) as node:
        try:
            _result(node.Store(key, value, args.ttl), cfg)
        except StoreError as error:
            raise CommandError(f"not stored: {error}") from None
    say(args.prog, f"stored {len(value)} bytes under key {key.hex()} for {args.ttl:g} s")
    return 0


def get(args: argparse.Namespace) -> int:
    key = parse_key(args.key)
    cfg = node_config(args)
    with start_node(cfg) as node:
        opts = () if args.all else (FirstValue(),)
        try:
            values = _result(node.Find(key, None, *opts), cfg)
        except NotFoundError as error:
            raise CommandError(f"not found: {error}") from None
    out = sys.stdout.buffer
    for value in values if args.all else values[:1]:
        out.write(value + b"\n")
    out.flush()
    return 0


def _value(text: str) -> bytes:
    """VALUE's bytes: standard input's for ``-`` (read no further than the
    limit), else the text's own (``os.fsencode``: UTF-8, and any bytes the
    shell passed that are not UTF-8 as they were)."""
    if text == "-":
        return sys.stdin.buffer.read(MAX_VALUE_SIZE + 1)
    return os.fsencode(text)


def _result(future: Future[T], cfg: Config) -> T:
    """The operation's result. It always ends (every request has a
    timeout); the bound, ``New``'s own, is a safety net against a bug."""
    bound = max(60.0, 30 * cfg.timeout)
    try:
        return future.result(timeout=bound)
    except TimeoutError:
        if future.done():  # the operation's own error, e.g. a RequestTimeout
            raise
        raise CommandError(f"no result within {bound:g} s") from None
