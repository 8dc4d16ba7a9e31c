"""The parsers of ``dht`` and its commands.

An option that sets a ``Config`` field (``--listen``, ``--bootstrap``,
``--listeners``, ``--timeout``, ``--state``) takes its help text and its default from
that field, so ``dht/config.py`` is the one place they are written. A usage
error is one line on stderr (``dht put: argument --ttl: ...``) and exit 2.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import math
from collections.abc import Callable
from functools import cache
from typing import Any, NoReturn

from .. import config as config_module
from ..config import Config, parse_address
from ..errors import ConfigError
from ..keys import KEY_BYTES
from ..wire.events import MAX_VALUE_SIZE
from .common import USAGE, problem_of

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
"""The choices of ``dht node --log-level``."""
DEFAULT_TTL = 3600.0
"""Seconds a ``dht put`` value lives when no ``--ttl`` is given."""


@cache
def config_docs() -> dict[str, str]:
    """Each ``Config`` field's documentation (the string under it in
    ``dht/config.py``), by field name; empty if the source is not at hand."""
    try:
        tree = ast.parse(inspect.getsource(config_module))
    except (OSError, TypeError, SyntaxError):
        return {}
    docs: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == Config.__name__:
            for stmt, after in zip(node.body, node.body[1:], strict=False):
                if (
                    isinstance(stmt, ast.AnnAssign)
                    and isinstance(stmt.target, ast.Name)
                    and isinstance(after, ast.Expr)
                    and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)
                ):
                    docs[stmt.target.id] = inspect.cleandoc(after.value.value)
    return docs


def config_help(field: str, *, first_clause: bool = False) -> str:
    """``Config.<field>``'s documentation as argparse help: one paragraph,
    without reStructuredText quotes, ``%`` escaped; with ``first_clause``,
    only up to its first semicolon."""
    text = config_docs().get(field, f"Config.{field}.")
    text = " ".join(text.replace("``", "").split())
    if first_clause and ";" in text:
        text = text.split(";", 1)[0] + "."
    return text.replace("%", "%%")


def config_default(field: str) -> Any:
    """``Config.<field>``'s default value."""
    for f in dataclasses.fields(Config):
        if f.name == field:
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            return f.default
    raise KeyError(field)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE, f"{self.prog}: {message} (see '{self.prog} --help')\n")


# -- argument types: each raises ArgumentTypeError with what was wrong -------


def _address(field: str, *, node_port: bool) -> Callable[[str], str]:
    def check(text: str) -> str:
        try:
            _, port = parse_address(text, field)
        except ConfigError as error:
            raise argparse.ArgumentTypeError(problem_of(error)) from None
        if node_port and port == 0:
            raise argparse.ArgumentTypeError(f"{text!r}: port 0 is no node's port")
        return text

    check.__name__ = "address"  # argparse names the type in some messages
    return check


def _number(*, integer: bool, zero: bool = False) -> Callable[[str], Any]:
    def check(text: str) -> float | int:
        try:
            value: float | int = int(text) if integer else float(text)
        except ValueError:
            kind = "an integer" if integer else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {kind}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if value < 0 or (value == 0 and not zero):
            least = "0 or more" if zero else "above 0"
            raise argparse.ArgumentTypeError(f"{text!r} is not {least}")
        return value

    check.__name__ = "number"
    return check


def _listen(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument(
        "--listen",
        metavar="HOST:PORT",
        dest="listen_address",
        type=_address("listen_address", node_port=False),
        required=required,
        default=None if required else config_default("listen_address"),
        help=config_help("listen_address") + ("" if required else " (default: %(default)s)"),
    )


def _bootstrap(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument(
        "--bootstrap",
        metavar="HOST:PORT",
        dest="bootstrap_addresses",
        action="append",
        type=_address("bootstrap_addresses", node_port=True),
        required=required,
        default=None,
        # "empty starts a new network" is no help where one is required
        help=config_help("bootstrap_addresses", first_clause=required)
        + " Repeat the option for several.",
    )


def _timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_number(integer=False),
        default=config_default("timeout"),
        help=config_help("timeout") + " (default: %(default)s)",
    )


KEY_HELP = (
    f"The key: exactly {2 * KEY_BYTES} hex digits are taken as the raw {KEY_BYTES}-byte "
    "key (as 'dht put' prints it); any other text is hashed with dht.Key (SHA-1 of its "
    "UTF-8 bytes, as the Go library's dht.Key)."
)


def build() -> Parser:
    """The ``dht`` parser; each command's ``run`` is in ``args.run``."""
    from . import client, demo, serve  # the commands import this module

    top = Parser(
        prog="dht",
        description="A Kademlia DHT node and client (github.com/purehyperbole/dht's protocol).",
        epilog="Run 'dht COMMAND --help' for a command's options.",
    )
    top.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = top.add_subparsers(title="commands", metavar="COMMAND", required=True)

    def command(name: str, help: str, run: Callable[[argparse.Namespace], int]) -> Parser:
        parser: Parser = commands.add_parser(name, help=help, description=help)
        parser.set_defaults(run=run, prog=parser.prog)
        return parser

    node = command(
        "node",
        "Run a node until Ctrl-C or SIGTERM (then close it and exit 0).",
        serve.run,
    )
    _listen(node, required=True)
    _bootstrap(node, required=False)
    node.add_argument(
        "--storage",
        metavar="PATH",
        help="Keep values in this SQLite file (dht.SQLiteStorage), so they survive a "
        "restart; in memory when not given.",
    )
    node.add_argument(
        "--state",
        metavar="PATH",
        dest="state_path",
        help=config_help("state_path"),
    )
    node.add_argument(
        "--listeners",
        metavar="N",
        type=_number(integer=True),
        default=config_default("listeners"),
        help=config_help("listeners") + " (default: %(default)s)",
    )
    _timeout(node)
    node.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        type=_address("metrics", node_port=False),
        help="Serve the node's stats at http://HOST:PORT/metrics in the Prometheus text "
        "format (dht.metrics); port 0 picks one, which is printed. None when not given.",
    )
    node.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default="WARNING",
        help="Write the library's log records from this level up to standard error, "
        "once the node has joined (default: %(default)s).",
    )
    node.add_argument(
        "--interval",
        metavar="SECONDS",
        type=_number(integer=False, zero=True),
        help="Seconds between summary lines (contacts, values, events in, drops); "
        "default 5 when standard output is a terminal, none otherwise; 0: none.",
    )

    put = command(
        "put",
        "Join through --bootstrap, store VALUE under KEY, and exit: 0 when stored, 1 when not.",
        client.put,
    )
    put.add_argument("key", metavar="KEY", help=KEY_HELP)
    put.add_argument(
        "value",
        metavar="VALUE",
        help=f"The value, as UTF-8 text; '-' reads its bytes from standard input. At "
        f"most {MAX_VALUE_SIZE} bytes.",
    )
    _bootstrap(put, required=True)
    put.add_argument(
        "--ttl",
        metavar="SECONDS",
        type=_number(integer=False),
        default=DEFAULT_TTL,
        help="Seconds the value lives; at most Config.max_ttl "
        f"({config_default('max_ttl'):.0f}). (default: %(default)g)",
    )
    _listen(put, required=False)
    _timeout(put)

    get = command(
        "get",
        "Join through --bootstrap, find the values under KEY, write them to standard "
        "output (each followed by a newline), and exit: 0 when found, 1 when not.",
        client.get,
    )
    get.add_argument("key", metavar="KEY", help=KEY_HELP)
    _bootstrap(get, required=True)
    get.add_argument(
        "--all",
        action="store_true",
        help="Every value of the K closest nodes (a full lookup); without it, the first "
        "value found (dht.FirstValue: usually one request).",
    )
    _listen(get, required=False)
    _timeout(get)

    demo_parser = command(
        "demo",
        "Start a network of local nodes on 127.0.0.1, store and find a batch of keys "
        "through it, print a summary, and exit: 0 when every operation succeeded.",
        demo.run,
    )
    demo_parser.add_argument(
        "--nodes",
        metavar="N",
        type=_number(integer=True),
        default=demo.DEFAULT_NODES,
        help="Nodes in the network (default: %(default)s).",
    )
    demo_parser.add_argument(
        "--keys",
        metavar="N",
        type=_number(integer=True),
        default=demo.DEFAULT_KEYS,
        help="Keys stored, then found, each through a different node (default: %(default)s).",
    )
    demo_parser.add_argument(
        "--concurrency",
        metavar="N",
        type=_number(integer=True),
        default=demo.DEFAULT_CONCURRENCY,
        help="Operations in flight at once (default: %(default)s).",
    )
    return top


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("dht")
    except Exception:  # not installed: run from a checkout
        return "(not installed)"
