"""Key files are private from the moment they exist."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from edgefleet.errors import ConfigError
from edgefleet.trust.keys import SigningKey


def test_saved_key_is_0600_and_loads_back(tmp_path: Path) -> None:
    """A saved key file has mode 0600 and loads as the same key."""
    key = SigningKey.generate()
    path = tmp_path / "k.key"
    key.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert SigningKey.load(path).keyid == key.keyid


def test_save_never_overwrites(tmp_path: Path) -> None:
    """Saving over an existing key file fails instead of replacing the key."""
    path = tmp_path / "k.key"
    SigningKey.generate().save(path)
    with pytest.raises(FileExistsError):
        SigningKey.generate().save(path)


def test_loading_garbage_is_a_config_error(tmp_path: Path) -> None:
    """A file that is not a PEM key gives a one-line ConfigError."""
    path = tmp_path / "bad.key"
    path.write_text("not a key")
    with pytest.raises(ConfigError, match="not a PEM private key"):
        SigningKey.load(path)
