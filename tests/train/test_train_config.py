"""Layered config: dataclass defaults < recipe < YAML < command line, type checks, saved config reloads."""

from __future__ import annotations

import argparse

import pytest

from slab_edge.errors import InputError
from slab_edge.train.config import (
    add_config_arguments,
    build_config,
    cli_overrides,
    config_to_dict,
    load_yaml_config,
    parse_set_overrides,
    save_config,
)
from slab_edge.train.recipes import TrainConfig, recipe_for, resolve_train_config


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, TrainConfig)
    return parser.parse_args(argv)


def test_layers_in_order(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("model: slab_swin_tiny_patch4_224\ndata: /data/imagenet\nlr: 0.001\nepochs: 7\n")
    args = parse(["--epochs", "3", "--set", "opt_betas=[0.9, 0.95]", "--no-progress"])
    cfg = resolve_train_config(load_yaml_config(yaml_file), cli_overrides(args, TrainConfig))
    assert cfg.epochs == 3  # flag beats file
    assert cfg.lr == 0.001  # file beats recipe (none) and defaults
    assert cfg.drop_path == 0.2  # Swin-T recipe (REFERENCE §4)
    assert cfg.prepbn_decay == 60_000
    assert cfg.opt_betas == (0.9, 0.95) and isinstance(cfg.opt_betas, tuple)
    assert cfg.progress is False
    assert cfg.clip_grad == 5.0 and cfg.aa == "rand-m9-mstd0.5-inc1"  # dataclass defaults = official recipe


def test_flags_not_given_do_not_mask_the_recipe():
    cfg = resolve_train_config(cli_values=cli_overrides(parse([]), TrainConfig))
    assert cfg.data == "digits" and cfg.hflip == 0.0 and cfg.mixup == 0.0 and cfg.aa is None  # digits recipe


@pytest.mark.parametrize(
    ("model", "key", "value"),
    [
        ("slab_swin_small_patch4_224", "drop_path", 0.3),
        ("slab_swin_base_patch4_224", "drop_path", 0.5),
        ("pvt_medium_prepbn", "clip_grad", 1.0),
        ("pvt_tiny_prepbn", "clip_grad", None),
        ("slab_pvt_small", "drop_path", 0.1),
        ("slab_pvt_tiny", "warmup_epochs", 5),
        ("slab_cswin_tiny_224", "prepbn_decay", 120_000),
        ("slab_cswin_small_224", "drop_path", 0.3),
        ("slab_cswin_tiny_224", "clip_grad", None),
        ("deit_small_prepbn_patch16_224", "prepbn_decay", 300_000),
        ("slab_deit_tiny_patch16_224", "prepbn_decay", 60_000),
        ("slab_deit_tiny_patch16_224", "drop_path", 0.0),
    ],
)
def test_family_recipes(model, key, value):
    layer = recipe_for(model, "/data/imagenet")
    assert key in layer and layer[key] == value


def test_type_errors_name_the_key():
    with pytest.raises(InputError, match="'epochs'.*int"):
        build_config(TrainConfig, {"epochs": "many"})
    with pytest.raises(InputError, match="'lr'"):
        build_config(TrainConfig, {"lr": [1, 2]})
    with pytest.raises(InputError, match="may not be null"):
        build_config(TrainConfig, {"epochs": None})
    with pytest.raises(InputError, match="did you mean epochs"):
        build_config(TrainConfig, ("config file", {"epohcs": 3}))
    with pytest.raises(InputError, match="key=value"):
        parse_set_overrides(["lr"])


def test_bad_yaml_files(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_yaml_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [1, 2\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_yaml_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(InputError, match="mapping"):
        load_yaml_config(listy)


def test_saved_config_reloads_identically(tmp_path):
    cfg = resolve_train_config(cli_values={"model": "slab_swin_tiny_patch4_224", "data": "/x", "lr": 3e-4})
    path = save_config(cfg, tmp_path, header="test header")
    assert path.read_text().startswith("# test header")
    again = build_config(TrainConfig, load_yaml_config(path))
    assert config_to_dict(again) == config_to_dict(cfg)
