"""Reading configuration files: TOML, then environment overrides, with one-line errors."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgefleet.errors import ConfigError


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file, or return {} when it does not exist."""
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from e


def environment_overrides(prefix: str, keys: Mapping[str, type]) -> dict[str, Any]:
    """Values of ``PREFIX_KEY`` environment variables for the known keys, typed."""
    found: dict[str, Any] = {}
    for key, kind in keys.items():
        raw = os.environ.get(f"{prefix}_{key.upper()}")
        if raw is None:
            continue
        found[key] = coerce(key, raw, kind)
    return found


def coerce(key: str, value: Any, kind: type) -> Any:
    """Convert a file or environment value to the field's type, or fail naming the key."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from e
    if kind is Path:
        return Path(str(value))
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def split_address(address: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (IPv6 in brackets), refusing anything else."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"address {address!r} is not HOST:PORT")
    return host.strip("[]"), int(port_text)
