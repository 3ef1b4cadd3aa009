"""Key management, bundles and the local registry commands, on a real controller and agent."""

from __future__ import annotations

import os
import re

import pytest

from edgefleet.files import sha256_of_file
from tests.harness import Fleet, wait_for
from tests.integration.fleets import (
    active_versions,
    agent_actions,
    models,
    publish_tiny,
    roll_out_and_wait_active,
    status,
)

pytestmark = pytest.mark.integration


def _root_version(fleet: Fleet) -> int:
    match = re.search(r"root v(\d+)", status(fleet, "gw"))
    assert match, status(fleet, "gw")
    return int(match.group(1))


def test_key_rotation_and_an_offline_root_ceremony_reach_the_device(
    small_fleet: tuple[Fleet, str],
) -> None:
    """Rotating the targets key (root v2), then moving the root role to a key that never
    touches the controller (root v3, signed on "another machine"): the running device
    follows both, and installs what the new targets key signs."""
    fleet, _device = small_fleet
    data = str(fleet.controller_dir)
    publish_tiny(fleet, "1", seed=1)
    roll_out_and_wait_active(fleet, "1")

    rotated = fleet.ctl("keys", "rotate", "targets", "--data-dir", data).stdout
    assert "draft root version 2" in rotated
    assert "published root version 2" in fleet.ctl("keys", "publish", "--data-dir", data).stdout
    publish_tiny(fleet, "2", seed=2)
    roll_out_and_wait_active(fleet, "2")
    assert _root_version(fleet) == 2

    offline = fleet.root / "offline-machine"
    offline.mkdir()
    generated = fleet.ctl("keys", "generate", "--out", str(offline / "root.key")).stdout
    public = generated.split("public ")[1].split()[0]
    fleet.ctl("keys", "rotate", "root", "--public", public, "--data-dir", data)
    refused = fleet.ctl("keys", "publish", "--data-dir", data, check=False)
    assert refused.returncode == 1 and "1 more of the new root keys" in refused.stderr
    draft = offline / "draft.json"
    fleet.ctl("keys", "export-draft", "--out", str(draft), "--data-dir", data)
    fleet.ctl("keys", "sign", str(draft), "--key", str(offline / "root.key"))
    imported = fleet.ctl("keys", "import-signatures", str(draft), "--data-dir", data).stdout
    assert "missing: nothing" in imported
    assert "published root version 3" in fleet.ctl("keys", "publish", "--data-dir", data).stdout
    assert list((fleet.controller_dir / "keys" / "retired").glob("*.key"))  # old root key
    wait_for("root v3 on the device", lambda: True if _root_version(fleet) == 3 else None, 30)
    publish_tiny(fleet, "3", seed=3)
    roll_out_and_wait_active(fleet, "3")
    listing = fleet.ctl("keys", "list", "--data-dir", data).stdout
    assert "root version 3" in listing and "targets    1-of-1" in listing


def test_a_bundle_installs_offline_and_the_registry_commands_verify_repair_and_roll_back(
    small_fleet: tuple[Fleet, str],
) -> None:
    """Export two versions as bundles, stop the controller, import them on the device; a
    tampered bundle is refused; a damaged blob is found, quarantined and repaired from the
    bundle; `rollback` returns to the previous version."""
    fleet, _device = small_fleet
    bundles = {}
    for version, seed in (("1", 1), ("2", 2)):
        publish_tiny(fleet, version, seed=seed, rows=40_000)
        bundles[version] = fleet.root / f"tiny-{version}.bundle"
        fleet.ctl("bundle", "export", f"tiny@{version}", "--out", str(bundles[version]))
    fleet.stop("controller")

    tampered = fleet.root / "tampered.bundle"
    data = bytearray(bundles["1"].read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    refused = fleet.agent("gw", "models", "import", str(tampered), check=False)
    assert refused.returncode == 1 and "does not match" in refused.stderr
    assert ("model.import", "tampered.bundle", "verification_failed") in agent_actions(fleet, "gw")

    for version in ("1", "2"):
        out = fleet.agent("gw", "models", "import", str(bundles[version])).stdout
        assert f"tiny@{version}: verified, installed, active" in out
    assert "tiny@2" in active_versions(fleet, "gw")

    assert "ok       tiny@2" in fleet.agent("gw", "models", "verify", "tiny").stdout
    stored = fleet.agent_dir("gw") / "blobs" / "sha256" / sha256_of_file(fleet.root / "tiny-2.gguf")
    os.chmod(stored, 0o644)
    with stored.open("r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02")
    damaged = fleet.agent("gw", "models", "verify", "tiny", check=False)
    assert damaged.returncode == 1 and "DAMAGED  tiny@2: 1 damaged chunk(s): 0" in damaged.stdout
    assert "QUARANTINED" in models(fleet, "gw")
    repaired = fleet.agent("gw", "models", "repair", "--from-bundle", str(bundles["2"])).stdout
    assert "repaired tiny@2: 1 chunk(s)" in repaired
    assert "damaged" not in fleet.agent("gw", "models", "verify").stdout.lower()

    rolled = fleet.agent("gw", "models", "rollback", "tiny").stdout
    assert "tiny: 2 -> 1" in rolled and "tiny@1" in active_versions(fleet, "gw")
    actions = agent_actions(fleet, "gw")
    for expected in (
        ("model.import", "tiny@1", "success"),
        ("model.verify", "tiny@2", "corrupt"),
        ("model.repair", "tiny@2", "success"),
        ("model.rollback", "tiny@1", "success"),
    ):
        assert expected in actions
