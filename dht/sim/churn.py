"""Session lengths: how long a simulated node stays before it leaves.

Measured sessions in deployed DHTs are heavy-tailed (many short, a few very
long): Weibull fits them well, with a shape below 1; the exponential
(shape 1) is the memoryless textbook case. Both are given by their median,
in seconds, which is what "a 1 h median session" means.
"""

from __future__ import annotations

import math
import random
from typing import Protocol


class Sessions(Protocol):
    """A distribution of session lengths, in seconds."""

    median: float

    def draw(self, rng: random.Random) -> float:
        """One session length, in seconds."""
        ...

    def describe(self) -> str:
        """One line for a report."""
        ...


class ExponentialSessions:
    """Exponentially distributed sessions with median ``median`` seconds
    (mean ``median / ln 2``)."""

    def __init__(self, median: float) -> None:
        if median <= 0:
            raise ValueError(f"the median session must be positive, got {median}")
        self.median = median

    def draw(self, rng: random.Random) -> float:
        return rng.expovariate(math.log(2) / self.median)

    def describe(self) -> str:
        return f"exponential sessions, median {format_duration(self.median)}"


class WeibullSessions:
    """Weibull-distributed sessions with median ``median`` seconds and the
    given ``shape`` (below 1: heavier tail than the exponential)."""

    def __init__(self, median: float, shape: float) -> None:
        if median <= 0 or shape <= 0:
            raise ValueError("the median session and the shape must be positive")
        self.median = median
        self.shape = shape
        self.scale = median / math.log(2) ** (1 / shape)

    def draw(self, rng: random.Random) -> float:
        return rng.weibullvariate(self.scale, self.shape)

    def describe(self) -> str:
        return f"Weibull sessions, shape {self.shape:g}, median {format_duration(self.median)}"


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds in ``text``: a number with an optional unit (``ms``, ``s``,
    ``m``/``min``, ``h``, ``d``; seconds without one), e.g. ``1h``, ``90s``,
    ``2.5m``. Raises ValueError."""
    text = text.strip().lower()
    for unit in sorted(_UNITS, key=len, reverse=True):
        if text.endswith(unit):
            number, factor = text[: -len(unit)], _UNITS[unit]
            break
    else:
        number, factor = text, 1.0
    seconds = float(number) * factor
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"not a duration: {text!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """``seconds`` in the largest unit that keeps it readable (``1h``, ``90s``)."""
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= size and seconds % (size / 10) == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"
