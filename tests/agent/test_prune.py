"""A version the fleet's signed targets no longer list (`edgefleetctl models rm`) leaves
the device at its next sync: uninstalled, its blob and chunk index deleted, audited. An
active one gives way to its previous version if that is still listed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.attacks.kit import Device, make_device, newer, with_v1_serving


@pytest.fixture
def device(tmp_path: Path) -> Iterator[Device]:
    made = make_device(tmp_path)
    yield made
    made.close()


def _unlist(device: Device, *refs: str) -> None:
    """The controller drops ``refs`` from its catalog and signs new targets."""
    controller = device.controller
    for ref in refs:
        del controller.models[ref]
    controller.targets = controller.sign_targets(list(controller.models.values()))
    controller.timestamp = controller.sign_timestamp(controller.targets, controller.policy)


def _removals(device: Device) -> list[tuple[str, bool, object]]:
    return [
        (r["target"], r["details"]["was_active"], r["details"]["now_active"])
        for r in device.audit_records()
        if r["action"] == "model.remove"
    ]


def test_an_unlisted_previous_version_is_uninstalled_and_its_disk_freed(device: Device) -> None:
    v1 = with_v1_serving(device)
    v2 = newer(device)
    device.controller.publish(v2)
    device.controller.assign("m@2")
    assert device.sync() == "" and device.active("m") == "2"
    _unlist(device, "m@1")
    assert device.sync() == ""
    assert [(m.name, m.version) for m in device.registry.installed()] == [("m", "2")]
    assert not device.blobs.path_of(v1.manifest.sha256).exists()
    assert not device.blobs.path_of(v1.manifest.chunks_sha256).exists()
    assert device.blobs.path_of(v2.manifest.sha256).exists()
    assert _removals(device) == [("m@1", False, None)]


def test_an_unlisted_active_version_falls_back_to_its_listed_previous(device: Device) -> None:
    with_v1_serving(device)
    device.controller.publish(newer(device))
    device.controller.assign("m@2")
    assert device.sync() == "" and device.active("m") == "2"
    device.controller.assign("m@1")  # what an operator's forced removal leaves assigned
    _unlist(device, "m@2")
    assert device.sync() == ""
    assert device.active("m") == "1"
    assert _removals(device) == [("m@2", True, "1")]


def test_an_unlisted_active_version_without_a_fallback_leaves_no_active_version(
    device: Device,
) -> None:
    v1 = with_v1_serving(device)
    device.controller.assignments = []
    _unlist(device, "m@1")
    assert device.sync() == ""
    assert device.active("m") is None and device.registry.installed() == []
    assert not device.blobs.path_of(v1.manifest.sha256).exists()
    assert _removals(device) == [("m@1", True, None)]
