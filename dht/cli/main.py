"""``main``: parse, run the command, and turn every error into one line."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from ..errors import DHTError
from .common import FAILED, INTERRUPTED, CommandError, describe, warn
from .options import build


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``dht`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    args = build().parse_args(argv)
    prog: str = args.prog
    try:
        status: int = args.run(args)
    except CommandError as error:
        warn(prog, str(error))
        return error.status
    except DHTError as error:
        message, status = describe(error)
        warn(prog, message)
        return status
    except KeyboardInterrupt:
        warn(prog, "interrupted")
        return INTERRUPTED
    except BrokenPipeError:  # the reader went away (dht get ... | head)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return FAILED
    except Exception as error:  # a bug: still one line, saying what it was
        warn(prog, f"unexpected error: {type(error).__name__}: {error}")
        return FAILED
    return status
