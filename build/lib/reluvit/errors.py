"""The error a constructor raises for an argument it refuses: it names the argument, so that a config key that is
that argument can be named in the one-line config error (``reluvit.run.validate``). :class:`Range` writes an
allowed set of numbers once, for the constructors and for validate's table of the keys no constructor sees."""

from __future__ import annotations

import math
from dataclasses import dataclass


class ArgumentError(ValueError):
    """``name``: the refused argument, dotted through the constructors that passed it on (``attention.alpha``)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name, self.message = name, message

    def __reduce__(self):  # the error crosses processes (DDP, submitit) with both fields
        return ArgumentError, (self.name, self.message)

    def within(self, argument: str) -> ArgumentError:
        """The same error, seen from the constructor whose ``argument`` held the refused value."""
        return ArgumentError(f"{argument}.{self.name}", self.message)


def check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ArgumentError(name, f"{value!r} is not one of: {', '.join(map(str, allowed))}")


@dataclass(frozen=True)
class Range:
    """Finite numbers from ``low`` to ``high`` (each end included unless ``*_open``; None: unbounded), integers
    only with ``integer``, plus the values in ``also`` (``-1``: every device) and None with ``null``. ``str()``
    reads as the allowed set: ``> 0``, ``an integer >= 1``, ``in [0, 1)``, ``-1 or an integer >= 1``."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    null: bool = False
    also: tuple = ()

    def __contains__(self, value) -> bool:
        if value is None:
            return self.null
        if not isinstance(value, bool) and value in self.also:
            return True
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.integer and not isinstance(value, int):
            return False
        return math.isfinite(value) and (
            (self.low is None or (value > self.low if self.low_open else value >= self.low))
            and (self.high is None or (value < self.high if self.high_open else value <= self.high)))

    def __str__(self) -> str:
        if self.low is not None and self.high is not None:
            text = f"in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"
        elif self.low is not None:
            text = f"{'>' if self.low_open else '>='} {self.low}"
        elif self.high is not None:
            text = f"{'<' if self.high_open else '<='} {self.high}"
        else:
            text = "a finite number"
        if self.integer:
            text = "an integer" + ("" if text == "a finite number" else f" {text}")
        return " or ".join([*map(repr, self.also), text, *(["null"] if self.null else [])])


def above(low: float, **options) -> Range:
    return Range(low, low_open=True, **options)


def at_least(low: float, **options) -> Range:
    return Range(low, **options)


COUNT = at_least(1, integer=True)  # sizes, counts and periods


def check_range(name: str, value, allowed: Range) -> None:
    """Raise :class:`ArgumentError` ``"<name>: -1.0 is not > 0"`` unless ``value`` is in ``allowed``."""
    if value not in allowed:
        finite = not isinstance(value, float) or math.isfinite(value)
        raise ArgumentError(name, f"{value!r} is not {allowed if finite else 'a finite number'}")
