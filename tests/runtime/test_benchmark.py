"""`slab-edge bench` and slab_edge.runtime.benchmark: statistics, A/B interleaving, JSON, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from slab_edge import cli
from slab_edge.errors import InputError
from slab_edge.runtime import load
from slab_edge.runtime.benchmark import LatencyStats, peak_rss_mb, random_inputs, time_interleaved


def test_latency_stats_from_known_samples():
    seconds = np.arange(1, 101) / 1000.0  # 1..100 ms
    stats = LatencyStats.from_seconds(seconds, batch=4)
    assert stats.iters == 100 and stats.min_ms == pytest.approx(1.0) and stats.max_ms == pytest.approx(100.0)
    assert stats.mean_ms == pytest.approx(50.5)
    assert stats.p50_ms == pytest.approx(50.5) and stats.p90_ms == pytest.approx(90.1)
    assert stats.p99_ms == pytest.approx(99.01)
    assert stats.throughput == pytest.approx(4 * 1000 / 50.5)
    assert stats.to_json()["throughput_per_s"] == pytest.approx(79.208, abs=1e-3)
    with pytest.raises(InputError):
        LatencyStats.from_seconds([], 1)


class Recorder:
    """A stand-in session that records the order of runs."""

    def __init__(self, name, order):
        self.name, self.order = name, order

    def run(self, feed):
        self.order.append(self.name)


def test_interleaving_alternates_order():
    order: list[str] = []
    sessions = {"A": Recorder("A", order), "B": Recorder("B", order)}
    times = time_interleaved(sessions, {"A": {}, "B": {}}, warmup=1, iters=4, burst=1, switch_discard=0)
    assert order == ["A", "B"] + ["A", "B", "B", "A", "A", "B", "B", "A"]
    assert len(times["A"]) == len(times["B"]) == 4


def test_bursts_skip_the_runs_after_a_switch():
    """Default interleaving: per round, each session runs 2 untimed + up to 5 timed times, order rotating."""
    order: list[str] = []
    sessions = {"A": Recorder("A", order), "B": Recorder("B", order)}
    times = time_interleaved(sessions, {"A": {}, "B": {}}, warmup=0, iters=7)
    assert order == ["A"] * 7 + ["B"] * 7 + ["B"] * 4 + ["A"] * 4
    assert len(times["A"]) == len(times["B"]) == 7
    order.clear()
    single = time_interleaved({"A": sessions["A"]}, {"A": {}}, warmup=0, iters=3)
    assert order == ["A"] * 3 and len(single["A"]) == 3  # nothing to switch from: nothing discarded
    with pytest.raises(InputError, match="burst"):
        time_interleaved(sessions, {"A": {}, "B": {}}, burst=0)
    order.clear()
    time_interleaved(sessions, {"A": {}, "B": {}}, warmup=0, iters=2, interleave=False)
    assert order == ["A", "A", "B", "B"]
    with pytest.raises(InputError, match="iters"):
        time_interleaved(sessions, {"A": {}, "B": {}}, iters=0)


def test_random_inputs_follow_the_model(tiny_onnx, fixed_batch_onnx):
    with load(tiny_onnx) as session:
        feeds = random_inputs(session, batch=3, seed=1)
        assert feeds["image"].shape == (3, 3, 32, 32) and feeds["image"].dtype == np.float32
        np.testing.assert_array_equal(feeds["image"], random_inputs(session, batch=3, seed=1)["image"])
    with load(fixed_batch_onnx) as session, pytest.raises(InputError, match="fixed batch of 1, not 2"):
        random_inputs(session, batch=2)


def test_peak_rss_is_plausible():
    assert 10 < peak_rss_mb() < 100_000


def test_cli_two_models_json(tiny_onnx, tiny_onnx_b2, tmp_path, capsys):
    target = tmp_path / "bench.json"
    argv = ["bench", str(tiny_onnx), str(tiny_onnx_b2), "--iters", "5", "--warmup", "1", "--batch", "2",
            "--threads", "1", "--names", "slab", "deit", "--json", "--output", str(target)]  # fmt: skip
    assert cli.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads(target.read_text())
    assert [m["name"] for m in report["models"]] == ["slab", "deit"]
    for m in report["models"]:
        lat = m["latency"]
        assert lat["iters"] == 5 and lat["batch"] == 2
        assert 0 < lat["min_ms"] <= lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"] <= lat["max_ms"]
        assert m["inputs"] == {"image": [2, 3, 32, 32]} and m["backend"] == "onnxruntime"
    ratio = report["ratios"]["slab/deit"]
    a, b = (m["latency"] for m in report["models"])
    assert ratio["p50"] == pytest.approx(a["p50_ms"] / b["p50_ms"], rel=1e-3)
    assert report["config"]["interleaved"] is True and report["peak_rss_mb"] > 0
    assert report["config"]["session_options"][0]["threads"] == 1


def test_cli_table(tiny_onnx, capsys):
    assert cli.main(["bench", str(tiny_onnx), "--iters", "3", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    assert "p50" in out and "1x3x32x32" in out and "peak RSS" in out and "latency ratio" not in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["{m}", "{m}", "{m}"], "one or two models"),
        (["{m}", "--batch", "0"], "argument --batch: must be a positive integer, got 0"),
        (["{m}", "--iters", "0"], "argument --iters: must be a positive integer, got 0"),
        (["{m}", "{m}", "--names", "x", "x"], "distinct name"),
        (["{f}", "--batch", "2"], "fixed batch of 1"),
        (["{m}.missing.onnx"], "not found"),
        (["{m}", "--provider-option", "use_tf32"], "--provider-option must be KEY=VALUE"),
    ],
)
def test_cli_errors(tiny_onnx, fixed_batch_onnx, capsys, extra, message):
    argv = [a.format(m=tiny_onnx, f=fixed_batch_onnx) for a in extra]
    assert cli.main(["bench", *argv]) == 2
    assert message in capsys.readouterr().err


def test_provider_options_reach_onnxruntime_load(tiny_onnx):
    """--provider-option KEY=VALUE pairs become load()'s provider_options (ONNX Runtime models only)."""
    import argparse

    from slab_edge.commands._runtime_args import add_backend_arguments, session_options

    parser = argparse.ArgumentParser()
    add_backend_arguments(parser)
    args = parser.parse_args(
        ["--provider", "cuda", "--provider-option", "use_tf32=0", "--provider-option", "device_id=1"]
    )
    assert session_options(args, str(tiny_onnx))["provider_options"] == {"use_tf32": "0", "device_id": "1"}
    assert "provider_options" not in session_options(parser.parse_args([]), str(tiny_onnx))
    assert "provider_options" not in session_options(args, "model.engine")


def test_cli_refuses_to_overwrite_a_model_with_its_report(tiny_onnx, tiny_onnx_b2, tmp_path, capsys):
    """--output naming a benchmarked model used to replace it with the JSON report."""
    import shutil

    b = shutil.copy(tiny_onnx_b2, tmp_path / "b.onnx")
    before = b.read_bytes()
    assert cli.main(["bench", str(tiny_onnx), str(b), "--iters", "1", "--output", str(b)]) == 2
    assert "would overwrite the model" in capsys.readouterr().err and b.read_bytes() == before
