"""argparse `type=` validators for numbers and output paths (torch-free).

A bad value stops the command at parse time with one line and exit status 2, before anything is loaded:

    slab-edge infer: error: argument --threads: must be a positive integer, got 0

A `Number` parses one value (argparse applies it to each item of an `nargs` list) and checks its range; the
same object checks values that arrive without argparse (config files, `--set`) through `problem(value)`.
Floats must be finite. `tests/commands/test_argtypes.py` walks every command's parser and fails on a numeric
option without a validator.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

from slab_edge.io import output_problem

__all__ = [
    "Number",
    "float_range",
    "int_range",
    "non_negative_float",
    "non_negative_int",
    "output_file",
    "output_folder",
    "positive_float",
    "positive_int",
    "probability",
]


@dataclass(frozen=True)
class Number:
    """An int or finite float in [low, high] (either end open or absent), named by `description`."""

    kind: type  #: int | float
    description: str  #: completes "must be ...", e.g. "a positive integer"
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def problem(self, value) -> str | None:
        """Why `value` (already a number) is out of range, or None when it is fine."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"must be {self.description}, got {value!r}"
        if self.kind is int and isinstance(value, float) and not value.is_integer():
            return f"must be {self.description}, got {value!r}"
        bad = not math.isfinite(value)
        if self.low is not None:
            bad |= value <= self.low if self.low_open else value < self.low
        if self.high is not None:
            bad |= value >= self.high if self.high_open else value > self.high
        return f"must be {self.description}, got {value:g}" if bad else None

    def __call__(self, text: str):
        try:
            value = self.kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"must be {self.description}, got {text!r}") from None
        message = self.problem(value)
        if message:
            raise argparse.ArgumentTypeError(message)
        return value

    def __repr__(self) -> str:  # argparse's own messages name the type by repr
        return f"Number({self.description})"


def int_range(low: int, high: int | None = None) -> Number:
    """An integer in [low, high] (no upper bound when high is None)."""
    text = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
    return Number(int, text, low, high)


def float_range(low: float, high: float, low_open: bool = False, high_open: bool = False) -> Number:
    """A finite float between low and high; each end closed unless `*_open`."""
    text = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    return Number(float, text, low, high, low_open, high_open)


positive_int = Number(int, "a positive integer", 0, low_open=True)
non_negative_int = Number(int, "an integer >= 0", 0)
positive_float = Number(float, "a positive number", 0, low_open=True)
non_negative_float = Number(float, "a number >= 0", 0)
probability = float_range(0, 1)


def output_file(text: str) -> Path:
    """An output file path that can be written (see `slab_edge.io.output_problem`)."""
    message = output_problem(text)
    if message:
        raise argparse.ArgumentTypeError(message)
    return Path(text)


def output_folder(text: str) -> Path:
    """An output folder path that exists as a folder or can be created (see `slab_edge.io.output_problem`)."""
    message = output_problem(text, folder=True)
    if message:
        raise argparse.ArgumentTypeError(message)
    return Path(text)
