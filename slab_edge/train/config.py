"""Dataclass configs with layered sources: defaults < recipe < YAML file < command line; saved resolved.

Model-agnostic (the vision trainer and `train-lm` share it). A config is a plain `@dataclass` whose fields
carry `metadata={"help": ...}`; this module turns it into argparse flags, parses `--set key=value`
overrides (values in YAML syntax), type-checks every value against the field's annotation, and writes the
resolved config next to a run. A numeric field also names its range, `metadata={"check": Number}` (from
slab_edge.commands.argtypes; each item of a tuple is checked): its flag rejects a bad value at parse time,
and a config file or --set value fails `build_config` the same way.

    @dataclass
    class MyConfig:
        lr: float = field(default=1e-3, metadata={"help": "peak learning rate", "check": positive_float})

    parser = argparse.ArgumentParser()
    add_config_arguments(parser, MyConfig)
    args = parser.parse_args()
    cfg = build_config(MyConfig, load_yaml_config(args.config), cli_overrides(args, MyConfig))
    save_config(cfg, run_dir)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Union

from slab_edge.commands.argtypes import Number
from slab_edge.errors import InputError
from slab_edge.io import atomic_write_text

__all__ = [
    "ConfigValue",
    "add_config_arguments",
    "build_config",
    "check_config",
    "check_value",
    "cli_overrides",
    "coerce_value",
    "config_to_dict",
    "load_yaml_config",
    "parse_set_overrides",
    "save_config",
]

_MISSING = object()


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """(inner type, allows None) for `X | None` / Optional[X]; other annotations unchanged."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        if len(args) == 1:
            return args[0], optional
        return Union[tuple(args)], optional  # noqa: UP007 - a runtime Union, not an annotation
    return tp, False


def coerce_value(name: str, value: Any, tp: Any) -> Any:
    """Check `value` against annotation `tp`, converting where lossless (int->float, list->tuple, "1"->1).

    Raises:
        InputError: naming the key, the expected type and the value.
    """
    inner, optional = _unwrap_optional(tp)
    if value is None:
        if optional or inner is Any:
            return None
        raise InputError(f"config key {name!r} may not be null")
    origin = typing.get_origin(inner)
    try:
        if inner is Any:
            return value
        if inner is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in (
                "true",
                "yes",
                "on",
                "1",
                "false",
                "no",
                "off",
                "0",
            ):
                return value.lower() in ("true", "yes", "on", "1")
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ValueError
        if inner is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if inner is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if inner is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
        if origin in (tuple, list):
            if isinstance(value, str):
                value = [v for v in value.replace(",", " ").split()]
            if not isinstance(value, (list, tuple)):
                raise ValueError
            args = typing.get_args(inner)
            item_tp = args[0] if args else Any
            items = [coerce_value(f"{name}[{i}]", v, item_tp) for i, v in enumerate(value)]
            return tuple(items) if origin is tuple else items
        if origin is dict or inner is dict:
            if not isinstance(value, dict):
                raise ValueError
            return dict(value)
        if origin is typing.Literal:
            if value not in typing.get_args(inner):
                raise InputError(
                    f"config key {name!r} must be one of {', '.join(map(repr, typing.get_args(inner)))}, "
                    f"got {value!r}"
                )
            return value
        if origin in (Union, types.UnionType):
            for alt in typing.get_args(inner):
                try:
                    return coerce_value(name, value, alt)
                except InputError:
                    continue
            raise ValueError
    except (TypeError, ValueError):
        raise InputError(f"config key {name!r} expects {_type_name(tp)}, got {value!r}") from None
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _unknown_key_error(cls, key: str, source: str) -> InputError:
    names = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(key, names, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return InputError(f"unknown config key {key!r} in {source}{hint}")


def check_value(value: Any, check: Number | None) -> str | None:
    """Why a coerced config value fails its field's `check` (each item of a list/tuple), or None."""
    if check is None or value is None:
        return None
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            problem = check.problem(item)
            if problem:
                return f"{problem} (item {i + 1} of {list(value)})"
        return None
    return check.problem(value)


def check_config(cfg) -> None:
    """Raise InputError if a field of config dataclass `cfg` fails its `check` (for configs built in code,
    which `build_config` did not see)."""
    for f in dataclasses.fields(cfg):
        problem = check_value(getattr(cfg, f.name), f.metadata.get("check"))
        if problem:
            raise InputError(f"config key {f.name!r} {problem}")


def is_numeric(tp: Any) -> bool:
    """True for int / float annotations, optional or as the items of a tuple / list (bool is not numeric)."""
    inner, _ = _unwrap_optional(tp)
    if typing.get_origin(inner) in (tuple, list):
        items = [a for a in typing.get_args(inner) if a is not Ellipsis]
        return bool(items) and all(is_numeric(a) for a in items)
    return inner in (int, float)


@dataclasses.dataclass(frozen=True)
class ConfigValue:
    """argparse `type=` of a numeric config flag: YAML text ("null" for None, "0.9,0.95" for a tuple)
    coerced to the field's annotation, then checked by the field's `check`."""

    name: str
    annotation: Any
    check: Number | None = None

    def __call__(self, text: str) -> Any:
        import yaml

        try:
            value = coerce_value(self.name, yaml.safe_load(text) if text.strip() else None, self.annotation)
        except (InputError, yaml.YAMLError):
            raise argparse.ArgumentTypeError(f"expects {_type_name(self.annotation)}, got {text!r}") from None
        problem = check_value(value, self.check)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value


def build_config(cls, *layers: tuple[str, dict[str, Any]] | dict[str, Any]):
    """Instantiate dataclass `cls` from layered dicts (later layers win); every value is type-checked.

    Args:
        cls: the config dataclass.
        layers: dicts, or (source name, dict) pairs so an unknown key's error names where it came from.
    """
    hints = _field_types(cls)
    checks = {f.name: f.metadata.get("check") for f in dataclasses.fields(cls)}
    merged: dict[str, Any] = {}
    for layer in layers:
        source, values = layer if isinstance(layer, tuple) else ("config", layer)
        for key, value in (values or {}).items():
            if key not in hints:
                raise _unknown_key_error(cls, key, source)
            merged[key] = coerce_value(key, value, hints[key])
            problem = check_value(merged[key], checks.get(key))
            if problem:
                raise InputError(f"config key {key!r} (from the {source}) {problem}")
    return cls(**merged)


def config_to_dict(cfg) -> dict[str, Any]:
    """A JSON/YAML-safe dict of a config dataclass (tuples become lists)."""

    def plain(v):
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        return v

    return {f.name: plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def load_yaml_config(path: str | Path | None) -> dict[str, Any]:
    """The mapping in a YAML (or JSON) config file; {} for None. Bad files raise InputError."""
    if path is None:
        return {}
    import yaml

    path = Path(path)
    if not path.is_file():
        raise InputError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"config file {path} is not valid YAML: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"config file {path} must hold a mapping of key: value, got {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def parse_set_overrides(items: list[str] | None) -> dict[str, Any]:
    """['lr=1e-3', 'opt_betas=[0.9, 0.95]'] -> {'lr': 0.001, 'opt_betas': [0.9, 0.95]} (values as YAML)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise InputError(f"--set expects key=value, got {item!r}")
        key, text = item.split("=", 1)
        key = key.strip().replace("-", "_")
        try:
            out[key] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            out[key] = text
    return out


def add_config_arguments(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """One `--field-name` flag per dataclass field (help from field metadata), plus --config and --set.

    Flags default to argparse.SUPPRESS, so `cli_overrides` sees only what the user typed: values the user
    did not give never mask the recipe or the config file.
    """
    group = parser.add_argument_group("config (any key also via --set key=value; see the saved config.yaml)")
    parser.add_argument("--config", default=None, metavar="YAML", help="config file (keys as in config.yaml)")
    parser.add_argument(
        "--set",
        dest="set_overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key (value in YAML syntax); repeatable; applied after the other flags",
    )
    hints = _field_types(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or f.metadata.get("cli") is False:
            continue
        flag = "--" + f.name.replace("_", "-")
        inner, _ = _unwrap_optional(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = f.metadata.get("help", "")
        help_text = f"{help_text} (default: {default!r})" if default is not None else help_text
        if inner is bool:
            group.add_argument(
                flag,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        elif is_numeric(hints[f.name]):
            kind = ConfigValue(f.name, hints[f.name], f.metadata.get("check"))
            group.add_argument(
                flag, dest=f.name, type=kind, default=argparse.SUPPRESS, metavar="V", help=help_text
            )
        else:
            group.add_argument(flag, dest=f.name, default=argparse.SUPPRESS, metavar="V", help=help_text)


def cli_overrides(args: argparse.Namespace, cls) -> dict[str, Any]:
    """The config keys the user gave on the command line (flags, then --set), as raw values."""
    import yaml

    hints = _field_types(cls)
    out: dict[str, Any] = {}
    for name in hints:
        if name in vars(args):
            value = getattr(args, name)
            if isinstance(value, str):
                inner, _ = _unwrap_optional(hints[name])
                if inner is not str:
                    with contextlib.suppress(yaml.YAMLError):
                        value = yaml.safe_load(value)
            out[name] = value
    out.update(parse_set_overrides(getattr(args, "set_overrides", None)))
    return out


def save_config(cfg, folder: str | Path, name: str = "config.yaml", header: str | None = None) -> Path:
    """Write the resolved config atomically as YAML (loadable with --config); `header` becomes comments."""
    import yaml

    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
    if header:
        text = "".join(f"# {line}\n" for line in header.splitlines()) + text
    return atomic_write_text(Path(folder) / name, text)
