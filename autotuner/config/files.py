"""Campaign files: TOML in, records out, and the config as run written back.

Reading checks every value against its field's annotation (one message naming the key: a typo
silently ignored would run a different experiment than the one the user wrote down), builds the
frozen records, then ``validation.validate`` checks what the types cannot say. The config as run is
written to ``results/<name>/config.toml``; ``autotuner resume`` reads it back from there, so a
resumed campaign cannot drift from the one it continues.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from autotuner.config.records import CampaignConfig
from autotuner.config.validation import ConfigError, validate
from autotuner.proposers.llm import LLMConfig


# ------------------------------------------------------------------------------- reading
def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " (or left out)"
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0])}s"
    if origin in (dict, Mapping, collections.abc.Mapping):
        return f"a table of {_type_name(typing.get_args(tp)[1])}s"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp``; lists become tuples (the dataclasses are
    frozen and hashable). Ints are accepted where floats are expected, never the reverse."""
    origin = typing.get_origin(tp)
    bad = ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key)
    if origin in (dict, Mapping, collections.abc.Mapping):
        if not isinstance(value, Mapping):
            raise bad
        key_tp, value_tp = typing.get_args(tp)
        return {_coerce(k, key_tp, key): _coerce(v, value_tp, f"{key}.{k}")
                for k, v in value.items()}
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad
        (item,) = typing.get_args(tp)[:1]
        return tuple(_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        if not -(2**63) <= value < 2**63:  # TOML integers are 64-bit; so is every store here
            raise ConfigError(f"{key}: {value} does not fit in 64 bits")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        if not math.isfinite(value):
            raise ConfigError(f"{key}: must be finite, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise bad  # pragma: no cover - an annotation this loader does not know


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if cls is LLMConfig:
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{prefix}: expected a table")
        try:
            return LLMConfig.from_mapping(raw)
        except (ValueError, TypeError, KeyError) as exc:
            raise ConfigError(f"{prefix}: {exc}") from None
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{prefix or 'config'}: expected a table, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        full = f"{prefix}.{key}" if prefix else key
        if key not in known:
            where = f"[{prefix}]" if prefix else "the top level"
            raise ConfigError(f"unknown key {full!r} (known in {where}: {', '.join(known)})")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            values[key] = _build(tp, value, full)
        else:
            values[key] = _coerce(value, tp, full)
    return cls(**values)


def config_from_mapping(raw: Mapping[str, Any]) -> CampaignConfig:
    """Build and validate a config from a parsed TOML document."""
    return validate(_build(CampaignConfig, raw, ""))


def load_config(path: str | Path | None = None, **overrides: Any) -> CampaignConfig:
    """Read a campaign file (None: all defaults), then apply dotted-key ``overrides``
    (``{"budget.proposals": 4}``), then validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such campaign file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read: {exc}") from None
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = raw
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = list(value) if isinstance(value, tuple) else value
    try:
        return config_from_mapping(raw)
    except ConfigError as exc:
        if path is not None:
            raise ConfigError(f"{path}: {exc}") from None
        raise


# ------------------------------------------------------------------------------- writing
def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = repr(value)
        return text if any(c in text for c in ".en") else text + ".0"
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        items = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else _toml_value(key)


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass config as nested plain dicts and lists (None values kept)."""
    out: dict[str, Any] = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = to_dict(value)
        elif isinstance(value, Mapping):
            out[f.name] = {k: list(v) if isinstance(v, tuple) else v for k, v in value.items()}
        elif isinstance(value, tuple):
            out[f.name] = list(value)
        else:
            out[f.name] = value
    return out


_INLINE_TABLES = ("prices", "extra_body", "scenario_requests", "heldout_requests")


def dumps(cfg: CampaignConfig) -> str:
    """TOML text that ``load_config`` reads back to an equal config. Unset optional values are
    written as comments, since TOML has no null."""
    lines: list[str] = ["# The campaign config as run (autotuner resume reads it back).", ""]

    def table(name: str, data: Mapping[str, Any]) -> None:
        scalars = {k: v for k, v in data.items()
                   if not isinstance(v, Mapping) or k in _INLINE_TABLES}
        subs = {k: v for k, v in data.items() if k not in scalars}
        if name:
            lines.append(f"[{name}]")
        for key, value in scalars.items():
            if value is None:
                lines.append(f"# {key} = (not set)")
            else:
                lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
        lines.append("")
        for key, value in subs.items():
            table(f"{name}.{key}" if name else key, value)

    table("", to_dict(cfg))
    return "\n".join(lines).rstrip() + "\n"


def write_config(cfg: CampaignConfig, path: str | Path) -> Path:
    """Write atomically (temp file + rename), so a crash never leaves half a config behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(dumps(cfg), encoding="utf-8")
    tmp.replace(path)
    return path
