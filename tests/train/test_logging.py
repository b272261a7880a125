"""slab_edge.train.logging: the progress bar is drawn only on a terminal."""

from __future__ import annotations

import io
import sys

import pytest

from slab_edge.train.logging import Progress, stderr_is_terminal

pytest.importorskip("tqdm", reason="the progress bar needs tqdm (the [train] extra)")


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class ClosedStream(io.StringIO):
    def isatty(self) -> bool:
        raise ValueError("I/O operation on closed file")


@pytest.mark.parametrize(
    ("stream", "terminal"),
    [(io.StringIO(), False), (FakeTerminal(), True), (ClosedStream(), False), (None, False)],
    ids=["file", "tty", "closed", "none"],
)
def test_stderr_is_terminal(monkeypatch, stream, terminal):
    monkeypatch.setattr(sys, "stderr", stream)
    assert stderr_is_terminal() is terminal


def test_no_bar_when_stderr_is_not_a_terminal(monkeypatch):
    log = io.StringIO()  # what `2> log.txt` or a CI runner gives the process
    monkeypatch.setattr(sys, "stderr", log)
    with Progress(10, desc="epoch 1") as bar:
        assert bar.bar is None
        bar.update(3, loss=0.5)  # silently ignored
    assert log.getvalue() == ""


def test_bar_on_a_terminal_unless_disabled(monkeypatch):
    tty = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", tty)
    with Progress(10, desc="epoch 1") as bar:
        assert bar.bar is not None
        bar.update(3, loss=0.5)
    assert "epoch 1" in tty.getvalue()
    with Progress(10, desc="epoch 2", enabled=False) as bar:
        assert bar.bar is None
