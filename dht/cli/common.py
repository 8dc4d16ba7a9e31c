"""What the commands share: keys, starting a node, and one-line errors."""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any

from ..config import Config
from ..errors import AddressInUse, ArgumentError, BootstrapError, ConfigError
from ..keys import KEY_BYTES, Key
from ..node import DHT, New
from ..sqlite_storage import StoragePathError

USAGE = 2
"""Exit status of a usage error (argparse's own)."""


def problem_of(error: ConfigError) -> str:
    """A ConfigError's message without its ``Config.<field>: `` prefix."""
    return str(error).removeprefix(f"Config.{error.field}: ")


OPTION_OF_FIELD = {
    "listen_address": "--listen",
    "bootstrap_addresses": "--bootstrap",
    "listeners": "--listeners",
    "timeout": "--timeout",
    "state_path": "--state",
}
"""The option that sets each ``Config`` field the command line exposes."""


FAILED = 1
"""Exit status of an operation that failed (not found, not stored, no
bootstrap node answered, the port in use, ...)."""
INTERRUPTED = 130
"""Exit status after Ctrl-C (128 + SIGINT), as shells report it."""

_RAW_KEY = re.compile(f"[0-9a-fA-F]{{{2 * KEY_BYTES}}}")


class CommandError(Exception):
    """Ends a command with ``message`` on stderr and exit ``status``."""

    def __init__(self, message: str, status: int = FAILED) -> None:
        super().__init__(message)
        self.status = status


def parse_key(text: str) -> bytes:
    """Exactly 40 hex digits: the raw 20-byte key; other text: ``dht.Key``
    of its bytes (UTF-8; ``os.fsencode`` keeps any bytes the shell passed
    that are not UTF-8 as they were)."""
    if _RAW_KEY.fullmatch(text):
        return bytes.fromhex(text)
    return Key(os.fsencode(text))


def node_config(args: argparse.Namespace, **fields: Any) -> Config:
    """A ``Config`` from the options that set its fields, and ``fields``."""
    for name in OPTION_OF_FIELD:
        value = getattr(args, name, None)
        if value is not None:
            fields.setdefault(name, value)
    return Config(**fields)


def start_node(cfg: Config) -> DHT:
    """``dht.New(cfg)``; a failure to bind says which address."""
    try:
        return New(cfg)
    except OSError as error:
        if isinstance(error, AddressInUse):
            raise
        raise CommandError(
            f"cannot listen on {cfg.listen_address}: {error.strerror or error}"
        ) from None


def describe(error: BaseException) -> tuple[str, int]:
    """A library error as one line for the user, and the exit status: 2
    for a bad argument (usage), 1 for the rest."""
    if isinstance(error, ConfigError):
        option = OPTION_OF_FIELD.get(error.field)
        where = f"argument {option}" if option else f"Config.{error.field}"
        return f"{where}: {problem_of(error)}", USAGE
    if isinstance(error, AddressInUse):
        return (
            f"cannot listen on {error.address}: the port is in use "
            "(another node or program holds it)"
        ), FAILED
    if isinstance(error, BootstrapError):
        return f"could not join the network: {error}", FAILED
    if isinstance(error, StoragePathError):
        return f"--storage: {error}", FAILED
    if isinstance(error, ArgumentError):  # ValueTooLarge, TTLTooLong, ...
        return str(error), USAGE
    return str(error) or type(error).__name__, FAILED


def say(prog: str, message: str) -> None:
    """One line on standard output, at once (others may be watching for it)."""
    print(f"{prog}: {message}", flush=True)


def warn(prog: str, message: str) -> None:
    """One line on standard error."""
    print(f"{prog}: {message}", file=sys.stderr, flush=True)
