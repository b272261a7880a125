"""tests/run_timm_suite.py fails loudly (SystemExit with the reason, nothing cached) when the sdist cannot be
fetched. The suite itself runs in `make test` (it needs the package index once, then the cache)."""

from __future__ import annotations

import pytest
import run_timm_suite


def test_fetch_without_an_index_exits_with_the_reason_and_caches_nothing(tmp_path, monkeypatch):
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # offline: only the empty find-links folder is searched
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))
    monkeypatch.setattr(run_timm_suite, "suite_dir", lambda version: tmp_path / "cache" / version)
    with pytest.raises(SystemExit) as info:
        run_timm_suite.fetch("0.0.1")
    message = str(info.value)
    assert message.startswith("cannot fetch the timm 0.0.1 sdist for its test suite: ")
    assert "timm==0.0.1" in message or "No matching distribution" in message, message
    assert not (tmp_path / "cache").exists()
