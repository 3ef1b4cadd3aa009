"""`edgefleetctl init` lays out a data directory whose secrets are private."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest

from edgefleet.controller.app.datadir import DataDir, initialize
from edgefleet.errors import ConfigError
from edgefleet.tls import cert_sha256
from edgefleet.trust.metadata import Root


def test_init_creates_private_keys_and_the_printed_fingerprint(tmp_path: Path) -> None:
    """Every private key is 0600, and the fingerprint is SHA-256 of root v1, which names the CA."""
    result = initialize(tmp_path / "c", "test", [], "127.0.0.1:7443")
    data = DataDir((tmp_path / "c").resolve())
    keys = [
        *data.keys.glob("*.key"),
        data.tls / "ca.key",
        data.tls / "server.key",
        data.operators / "admin" / "key.pem",
    ]
    assert len(keys) == 8
    assert all(stat.S_IMODE(k.stat().st_mode) == 0o600 for k in keys)
    root_v1 = data.root_chain()[0]
    assert hashlib.sha256(root_v1.payload).hexdigest() == result.root_fingerprint
    assert Root.from_payload(root_v1.payload).ca_sha256 == cert_sha256(data.ca_cert.read_bytes())


def test_init_refuses_an_initialized_directory(tmp_path: Path) -> None:
    """Running init twice never replaces the fleet's keys."""
    initialize(tmp_path / "c", "test", [], "127.0.0.1:7443")
    with pytest.raises(ConfigError, match="already initialized"):
        initialize(tmp_path / "c", "test", [], "127.0.0.1:7443")
