"""Root key management on a data directory: drafts, thresholds, offline signatures, publish."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.controller.app.datadir import DataDir, initialize
from edgefleet.controller.trust import rootkeys
from edgefleet.controller.trust.keyring import Keyring
from edgefleet.errors import ConfigError, SignatureError
from edgefleet.trust.envelope import Envelope, Signature
from edgefleet.trust.keys import SigningKey


@pytest.fixture
def data(tmp_path: Path) -> DataDir:
    initialize(tmp_path / "ctl", "test", [], "127.0.0.1:7443")
    return DataDir((tmp_path / "ctl").resolve())


def test_rotating_an_online_key_publishes_root_v2_and_retires_the_old_key(data: DataDir) -> None:
    """The keyring signs with the new key at once; the old private key leaves the keyring."""
    keyring = Keyring(data)
    old = keyring.current().signers("targets")[0].keyid
    _root, written = rootkeys.rotate_key(data, "targets")
    assert rootkeys.publish(data).version == 2
    new = keyring.current().signers("targets")[0].keyid
    assert new != old and written.endswith(".key")
    assert (data.keys / "retired" / "targets.key").exists()
    assert rootkeys.load_draft(data) is None


def test_changes_that_would_break_a_role_are_refused(data: DataDir) -> None:
    """Revoking below the threshold, impossible thresholds, unknown roles: one-line errors."""
    keyid = rootkeys.current_root(data).roles["policy"].keyids[0]
    with pytest.raises(ConfigError, match="leaves 0 policy key"):
        rootkeys.revoke_key(data, "policy", keyid[:12])
    with pytest.raises(ConfigError, match="threshold must be 1..that"):
        rootkeys.set_threshold(data, "targets", 2)
    with pytest.raises(ConfigError, match="unknown role"):
        rootkeys.rotate_key(data, "snapshot")
    with pytest.raises(ConfigError, match="names no single"):
        rootkeys.revoke_key(data, "policy", "abc")


def test_a_root_threshold_raised_with_an_offline_key_needs_its_signature(
    data: DataDir, tmp_path: Path
) -> None:
    """Root 2-of-2 with one key offline: publish names what is missing; signing the
    exported draft elsewhere and importing it lets publish through."""
    offline = SigningKey.generate()
    rootkeys.add_key(data, "root", offline.public)
    rootkeys.set_threshold(data, "root", 2)
    with pytest.raises(SignatureError, match="1 more of the new root keys"):
        rootkeys.publish(data)
    exported = tmp_path / "draft.json"
    exported.write_bytes((data.root_metadata.parent / "root-draft.json").read_bytes())
    rootkeys.sign_draft_file(exported, offline)
    assert rootkeys.import_signatures(data, exported).missing == ()
    root = rootkeys.publish(data)
    assert root.version == 2 and root.roles["root"].threshold == 2


def test_foreign_or_forged_signatures_are_not_imported(data: DataDir, tmp_path: Path) -> None:
    """A signed copy of another root, or a signature that does not verify, is refused."""
    rootkeys.renew(data)
    draft = Envelope.from_json((data.root_metadata.parent / "root-draft.json").read_bytes())
    stranger = tmp_path / "other.json"
    stranger.write_bytes(Envelope(draft.payload_type, draft.payload + b" ", ()).to_json())
    with pytest.raises(SignatureError, match="signs another root"):
        rootkeys.import_signatures(data, stranger)
    root_keyid = rootkeys.current_root(data).roles["root"].keyids[0]
    forged = tmp_path / "forged.json"
    forged.write_bytes(
        Envelope(draft.payload_type, draft.payload, (Signature(root_keyid, b"\0" * 64),)).to_json()
    )
    with pytest.raises(SignatureError, match="is not valid"):
        rootkeys.import_signatures(data, forged)
