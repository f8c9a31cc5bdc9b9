"""TFDS-style split strings (``train``, ``train[:99%]``, ``train[-5000:]``) and the samples they select.

A boundary is an integer (negative counts from the end) or a percentage, turned into samples as TFDS does with its
default rounding (``closest``, ``_pct_to_abs_closest``): ``round(p * n / 100)``, Python's round (half to even). For
ImageNet-1k's 1,281,167 training images, big_vision's ``train[:99%]`` is the first 1,268,355 (99 % is 1,268,355.33)
and minival ``train[99%:]`` the last 12,812. Where this differs from TFDS: both boundaries share one unit (TFDS
reads ``[10:50%]`` as percentages), ``+`` of splits and the ``shard`` unit are not supported, and a selection that
is empty or reaches past the split is an error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SPLIT = re.compile(r"(?P<name>[\w-]+)(?:\[(?P<start>-?\d+%?)?:(?P<stop>-?\d+%?)?\])?")
SYNTAX = "name or name[a:b], a and b integers or percentages (train, train[:99%], train[-10000:])"


@dataclass(frozen=True)
class Split:
    """A split's name and the slice of it, as written: ``start``/``stop`` None where omitted, ``percent`` when they
    are percentages."""

    name: str
    start: int | None = None
    stop: int | None = None
    percent: bool = False

    @property
    def whole(self) -> bool:
        return self.start is None and self.stop is None

    def bounds(self, n: int) -> tuple[int, int]:
        """The positions ``[lo, hi)`` this selects of a split of ``n`` samples."""
        lo, hi = self._position(self.start, n, 0), self._position(self.stop, n, n)
        if lo >= hi:
            raise ValueError(f"{self} selects no samples of the {n} in split {self.name!r}")
        return lo, hi

    def _position(self, boundary: int | None, n: int, omitted: int) -> int:
        if boundary is None:
            return omitted
        samples = round(boundary * n / 100) if self.percent else boundary
        if abs(samples) > n:
            raise ValueError(f"{self} reaches past the {n} samples of split {self.name!r}")
        return samples + n if samples < 0 else samples

    def __str__(self) -> str:
        if self.whole:
            return self.name
        unit = "%" if self.percent else ""
        start, stop = ("" if b is None else f"{b}{unit}" for b in (self.start, self.stop))
        return f"{self.name}[{start}:{stop}]"


def parse_split(text: str) -> Split:
    """The :class:`Split` of ``text``; ValueError in one line on any other syntax."""
    text = str(text).strip()
    match = _SPLIT.fullmatch(text)
    if not match or "[" in text and not (match["start"] or match["stop"]):
        raise ValueError(f"{text!r} is not a split: {SYNTAX}")
    units = {b.endswith("%") for b in (match["start"], match["stop"]) if b}
    if len(units) > 1:
        raise ValueError(f"{text!r} mixes a percentage and a sample count: give both boundaries in one unit")
    start, stop = (int(b.rstrip("%")) if b else None for b in (match["start"], match["stop"]))
    percent = units == {True}
    if percent and any(b is not None and abs(b) > 100 for b in (start, stop)):
        raise ValueError(f"{text!r}: a percentage boundary lies in [-100%, 100%]")
    return Split(match["name"], start, stop, percent)


def overlap(a: Split, b: Split, n: int) -> bool:
    """Whether two splits of a split of ``n`` samples select a sample in common."""
    if a.name != b.name:
        return False
    (lo_a, hi_a), (lo_b, hi_b) = a.bounds(n), b.bounds(n)
    return max(lo_a, lo_b) < min(hi_a, hi_b)
