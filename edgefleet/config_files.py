"""Reading configuration files: TOML, then environment overrides, with one-line errors."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

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


_FIELD_TYPES: dict[str, type] = {"int": int, "str": str, "bool": bool, "Path": Path}
C = TypeVar("C")


def load_layered(
    kind: type[C], data_dir: Path, file_name: str, prefix: str, flags: Mapping[str, Any]
) -> C:
    """Build a frozen config dataclass from ``data_dir/file_name``, then ``PREFIX_*``, then flags.

    Unknown keys in the file are refused; flags that are None are not set.
    """
    fields = dataclasses.fields(kind)  # type: ignore[arg-type]
    types = {f.name: _FIELD_TYPES[str(f.type)] for f in fields if f.name != "data_dir"}
    path = data_dir / file_name
    values: dict[str, Any] = {}
    for key, value in read_toml(path).items():
        if key not in types:
            raise ConfigError(f"{path}: unknown setting {key!r}")
        values[key] = coerce(key, value, types[key])
    values.update(environment_overrides(prefix, types))
    values.update({k: v for k, v in flags.items() if v is not None})
    factory: Any = kind
    return factory(data_dir=data_dir, **values)  # type: ignore[no-any-return]


def is_loopback(host: str) -> bool:
    """Tell whether ``host`` names only this machine (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
