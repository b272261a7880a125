"""Every numeric and output option of every command is validated at parse time (slab_edge.commands.argtypes):
a bad value is one line, `slab-edge <cmd>: error: argument --x: ...`, and exit status 2.

The walker below builds each command's real parser; a new option with a plain `type=int` / `type=float`, or
one that accepts 0 or -1 without an entry (and a reason) in the allow-lists, fails it.
"""

from __future__ import annotations

import argparse
import re
import typing

import pytest

from slab_edge.cli import COMMANDS, command_parser, main
from slab_edge.commands.argtypes import (
    Number,
    float_range,
    int_range,
    non_negative_int,
    output_file,
    output_folder,
    positive_float,
    positive_int,
    probability,
)
from slab_edge.errors import InputError
from slab_edge.train.config import ConfigValue, build_config, is_numeric

#: options where 0 is a meaningful value ("command --flag"), each with the reason
ZERO_OK = {
    **{f"{c} --device": "CUDA device 0 is the first GPU" for c in ("infer", "bench", "compare")},
    **{f"{c} --dla-core": "DLA core 0 is the first core" for c in ("infer", "bench", "compare", "build")},
    **{f"{c} --seed": "0 seeds the generators like any other seed" for c in ("bench", "compare", "generate")},
    "bench --warmup": "no untimed runs: the first run is timed too",
    "bench --switch-discard": "no untimed runs after each A/B switch",
    "compare --atol": "0 with --rtol 0 demands identical outputs",
    "compare --rtol": "0: the absolute tolerance alone",
    "export-lm --parity-tokens": "0 skips the greedy-token comparison",
    "build --opt-level": "TensorRT builder optimization level 0 (fastest build) is valid",
    "recalibrate --epochs": "0 passes: only --steps batches",
    "recalibrate --steps": "0 extra batches: only --epochs",
    "recalibrate --num-workers": "0 loads data in the main process",
    "evaluate --num-workers": "0 loads data in the main process",
    "generate --temperature": "0 is greedy decoding",
    "generate --top-k": "0 samples among all tokens",
    "infer --mean": "a normalisation mean of 0 for a channel is valid",
    # config keys of train / train-lm (the same keys in YAML and --set)
    **{
        f"train --{key}": reason
        for key, reason in {
            "seed": "0 seeds the generators like any other seed",
            "min-lr": "the cosine may end at 0",
            "warmup-lr": "warm-up may start at 0",
            "warmup-epochs": "no warm-up",
            "cooldown-epochs": "no cool-down",
            "opt-betas": "a beta of 0 turns the moving average off",
            "momentum": "0 is plain SGD",
            "weight-decay": "no weight decay",
            "drop-path": "no stochastic depth",
            "prepbn-decay": "0 switches LN to RepBN at once",
            "prepbn-warmup": "no LN-only steps",
            "nonfinite-patience": "0 never stops (non-finite updates are still skipped)",
            "mean": "a normalisation mean of 0 for a channel is valid",
            "hflip": "never flip",
            "color-jitter": "no colour jitter",
            "reprob": "no random erasing",
            "mixup": "mixup off",
            "cutmix": "cutmix off",
            "mixup-prob": "never mix a batch",
            "mixup-switch-prob": "never switch to cutmix",
            "smoothing": "no label smoothing",
            "num-workers": "0 loads data in the main process (exact resume)",
            "checkpoint-every": "0 checkpoints at epoch ends only",
            "eval-every": "0 evaluates only at the end",
            "recal-epochs": "no recalibration passes",
            "recal-steps": "no recalibration batches",
        }.items()
    },
    **{
        f"train-lm --{key}": reason
        for key, reason in {
            "seed": "0 seeds the generators like any other seed",
            "min-lr-ratio": "the cosine may end at 0",
            "warmup": "no warm-up",
            "weight-decay": "no weight decay",
            "opt-betas": "a beta of 0 turns the moving average off",
            "prepbn-warmup": "no RMSNorm-only steps",
            "prepbn-decay": "0 switches to RepBN at once",
            "recal-steps": "0 turns recalibration off",
            "nonfinite-patience": "0 never stops (non-finite updates are still skipped)",
        }.items()
    },
}
#: options where a negative number is meaningful: none today (seeds, device indices and levels are >= 0)
NEGATIVE_OK: dict[str, str] = {}

#: output paths that are config keys (also set from YAML or --set), checked when the run starts instead:
#: tests/train/test_train_cli.py::test_unwritable_output_folder and test_lm_train.py
OUTPUT_CHECKED_LATER = {
    "train --output": "a config key: the run folder is checked (creating nothing) when the run starts",
    "train-lm --output": "a config key: the run folder is checked (creating nothing) when the run starts",
}
OUTPUT_FLAGS = ("-o", "--output", "--out", "--save-folded", "--timing-cache")


def _options():
    for command in COMMANDS:
        for action in command_parser(command)._actions:
            if action.option_strings and not isinstance(action, argparse._HelpAction):
                yield command, action


def _flag(action) -> str:
    return max(action.option_strings, key=len)


def _numeric_kind(action):
    """int | float for a numeric option (None otherwise); 'raw' for a bare type=int / type=float."""
    kind = action.type
    if kind in (int, float):
        return "raw"
    if isinstance(kind, Number):
        return kind.kind
    if isinstance(kind, ConfigValue) and is_numeric(kind.annotation):
        return "config"
    return None


def _rejects(action, value: str) -> bool:
    kind = action.type
    if isinstance(kind, ConfigValue):
        annotations = [kind.annotation, *typing.get_args(kind.annotation)]  # tuple or optional tuple
        if any(typing.get_origin(a) in (tuple, list) for a in annotations):
            value = f"{value},{value}"  # a tuple key: every item bad
    try:
        kind(value)
    except argparse.ArgumentTypeError:
        return True
    except ValueError:  # a bare int/float
        return True
    return False


NUMERIC = [(c, a) for c, a in _options() if _numeric_kind(a)]


def test_the_walker_finds_the_options():
    found = {f"{c} {_flag(a)}" for c, a in NUMERIC}
    assert {
        "infer --threads",
        "bench --iters",
        "train --epochs",
        "train-lm --lr",
        "build --opt-level",
    } <= found
    assert len(found) > 100


@pytest.mark.parametrize(("command", "action"), NUMERIC, ids=[f"{c} {_flag(a)}" for c, a in NUMERIC])
def test_every_numeric_option_rejects_bad_values(command, action):
    key = f"{command} {_flag(action)}"
    assert _numeric_kind(action) != "raw", f"{key}: use a validator from slab_edge.commands.argtypes"
    if key in NEGATIVE_OK:
        assert not _rejects(action, "-1"), f"{key} is in NEGATIVE_OK but rejects -1"
    else:
        assert _rejects(action, "-1"), f"{key} accepts -1"
    if key in ZERO_OK:
        assert not _rejects(action, "0"), f"{key} is in ZERO_OK but rejects 0: drop it from the list"
    else:
        assert _rejects(action, "0"), f"{key} accepts 0: validate it, or add it to ZERO_OK with a reason"


def test_allow_lists_name_real_options():
    found = {f"{c} {_flag(a)}" for c, a in NUMERIC}
    assert set(ZERO_OK) <= found and set(NEGATIVE_OK) <= found
    outputs = {f"{c} {_flag(a)}" for c, a in _options() if set(a.option_strings) & set(OUTPUT_FLAGS)}
    assert set(OUTPUT_CHECKED_LATER) <= outputs


def test_numeric_options_reject_nan_and_inf():
    for command, action in NUMERIC:
        for value in ("nan", "inf", "-inf"):
            assert _rejects(action, value), f"{command} {_flag(action)} accepts {value}"


@pytest.mark.parametrize(
    ("command", "action"),
    [(c, a) for c, a in _options() if set(a.option_strings) & set(OUTPUT_FLAGS)],
    ids=lambda x: x if isinstance(x, str) else _flag(x),
)
def test_every_output_option_checks_its_path(command, action):
    key = f"{command} {_flag(action)}"
    if key not in OUTPUT_CHECKED_LATER:
        assert action.type in (output_file, output_folder), f"{key}: use argtypes.output_file/output_folder"


# -- the validators themselves -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "good", "bad"),
    [
        (positive_int, ["1", "64"], ["0", "-3", "1.5", "x", ""]),
        (non_negative_int, ["0", "7"], ["-1", "2.0"]),
        (positive_float, ["1e-8", "3"], ["0", "-1e-3", "nan", "inf"]),
        (probability, ["0", "0.5", "1"], ["-0.1", "1.01", "nan"]),
        (float_range(0, 1, low_open=True), ["1", "1e-9"], ["0"]),
        (float_range(0, 1, high_open=True), ["0", "0.999"], ["1"]),
        (int_range(0, 5), ["0", "5"], ["-1", "6"]),
        (int_range(17), ["17", "99"], ["16"]),
    ],
)
def test_number_validators(kind, good, bad):
    for text in good:
        assert kind(text) == kind.kind(text)
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(f"must be {kind.description}, got")):
            kind(text)


def test_usage_error_is_exactly_one_line_and_exit_2(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    assert main(["infer", str(model), str(tmp_path), "--threads", "0"]) == 2
    err = capsys.readouterr().err
    assert err == "slab-edge infer: error: argument --threads: must be a positive integer, got 0\n"


@pytest.mark.parametrize(
    "argv",
    [
        ["infer", "m.onnx", "x.png", "--std", "0.3", "0", "0.3"],
        ["train", "--std", "0.3,0,0.3"],
        ["train", "--set", "std=[0.3, 0, 0.3]"],
    ],
)
def test_list_values_are_checked_item_by_item(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "must be a positive number, got 0" in err, err
    assert list(tmp_path.iterdir()) == []


def test_config_file_and_set_values_are_checked_like_flags(tmp_path, capsys):
    from slab_edge.train.lm import LMTrainConfig
    from slab_edge.train.recipes import TrainConfig

    with pytest.raises(
        InputError, match=r"'epochs' \(from the config file\) must be a positive integer, got 0"
    ):
        build_config(TrainConfig, ("config file", {"epochs": 0}))
    with pytest.raises(InputError, match="'opt_betas'.*must be a number in \\[0, 1\\), got 1"):
        build_config(LMTrainConfig, {"opt_betas": [0.9, 1.0]})
    config = tmp_path / "c.yaml"
    config.write_text("lr: -0.001\n")
    assert main(["train-lm", "--config", str(config), "--print-config"]) == 2
    assert "'lr' (from the config file) must be a positive number, got -0.001" in capsys.readouterr().err
    assert main(["train-lm", "--set", "threads=0", "--print-config"]) == 2
    assert "'threads' (from the command line) must be a positive integer, got 0" in capsys.readouterr().err


def test_optional_config_flags_take_null(capsys):
    assert main(["train-lm", "--max-seconds", "null", "--lr", "0.01", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert '"max_seconds": null' in out and '"lr": 0.01' in out


def test_configs_built_in_code_are_checked_when_training_starts(tmp_path):
    from slab_edge.train.lm import LMTrainConfig, train_lm
    from slab_edge.train.recipes import TrainConfig
    from slab_edge.train.vision import train_vision

    with pytest.raises(InputError, match="'lr' must be a positive number, got -1"):
        train_lm(LMTrainConfig(lr=-1.0, output=str(tmp_path / "lm")))
    with pytest.raises(InputError, match="'epochs' must be a positive integer, got 0"):
        train_vision(TrainConfig(epochs=0, output=str(tmp_path / "vision")))
    assert list(tmp_path.iterdir()) == []
