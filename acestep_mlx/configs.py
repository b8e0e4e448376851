"""Reading the original config.json files into dataclasses, with clear errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A config.json is missing, unreadable or lacks a field the model needs."""


def read_config_json(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    return data


def config_from_dict(cls: type[T], data: dict[str, Any], source: str = "config.json") -> T:
    """Build dataclass `cls` from `data`, ignoring unknown keys.

    Fields without a default are required: a missing one raises ConfigError naming the field and
    the file. Lists become tuples where the field default is a tuple.
    """
    kwargs = {}
    missing = []
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in data:
            value = data[f.name]
            if isinstance(value, list):
                value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
            kwargs[f.name] = value
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            missing.append(f.name)
    if missing:
        raise ConfigError(
            f"{source} lacks required field(s) {', '.join(missing)} for {cls.__name__}; "
            "the checkpoint folder is incomplete or not an ACE-Step v1 checkpoint"
        )
    return cls(**kwargs)
