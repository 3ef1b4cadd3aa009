"""Importing bundles on a device: the same checks as a sync, and older bundles handled."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.agent.registry.bundles import import_bundle
from edgefleet.bundle import BundleHeader, write_bundle
from edgefleet.errors import RollbackError
from tests.attacks.kit import Device, Model, make_device, make_model, with_v1_serving


@pytest.fixture
def device(tmp_path: Path) -> Iterator[Device]:
    made = make_device(tmp_path)
    yield made
    made.close()


def _bundle(device: Device, model: Model, path: Path) -> Path:
    """What `edgefleetctl bundle export` writes, from the controller's current metadata."""
    controller = device.controller
    assert controller.timestamp is not None and controller.targets is not None
    header = BundleHeader(
        model.manifest.ref,
        tuple(controller.root_chain),
        controller.timestamp,
        controller.targets,
        controller.policy,
    )
    with path.open("wb") as out:
        manifest = model.manifest
        write_bundle(
            out,
            header,
            model.index,
            manifest.chunks_sha256,
            manifest.sha256,
            manifest.length,
            iter([model.data]),
        )
    return path


def _import(device: Device, path: Path) -> None:
    import_bundle(device.registry, device.config, device.fingerprint, path, True)


def test_a_bundle_installs_activates_and_moves_trust_forward(device: Device) -> None:
    """m@2 from a bundle: verified, active, and the bundle's newer timestamp is now trusted."""
    with_v1_serving(device)
    v2 = make_model(device.folder, "m", "2", seed=2)
    device.controller.publish(v2)
    _import(device, _bundle(device, v2, device.folder / "m2.bundle"))
    assert device.serving_intact("m@2")
    assert device.registry.load_trust(device.fingerprint).timestamp.version == 2


def test_an_older_bundle_is_accepted_only_for_a_model_the_device_still_trusts(
    device: Device,
) -> None:
    """After the device synced newer metadata, an older bundle's model installs if the
    trusted targets name the same file; a model only the old metadata names is refused."""
    with_v1_serving(device)
    controller = device.controller
    v2 = make_model(device.folder, "m", "2", seed=2)
    controller.publish(v2)
    old_bundle = _bundle(device, v2, device.folder / "old.bundle")
    controller.publish(make_model(device.folder, "m", "3", seed=3))
    assert device.sync() == ""  # the device now trusts timestamp and targets v3
    _import(device, old_bundle)
    assert device.serving_intact("m@2")

    x = make_model(device.folder, "x", "1", seed=4)
    controller.models[x.manifest.ref] = x
    controller.blobs[x.manifest.sha256] = x.data
    controller.targets = controller.sign_targets([x])  # a targets version without m
    controller.timestamp = controller.sign_timestamp(controller.targets, None)
    stale = _bundle(device, x, device.folder / "x.bundle")
    del controller.models[x.manifest.ref]
    controller.publish()  # targets v5 names m@1..3 again, not x
    assert device.sync() == ""
    with pytest.raises(RollbackError):
        _import(device, stale)


def test_a_bundle_version_serves_only_after_its_smoke_test(device: Device) -> None:
    """Review hole L5: `models import` activated without the smoke test. A version that
    fails it is installed but not activated, the reason is audited and reported, and the
    version serving keeps serving; one that passes is activated."""
    import json

    from edgefleet.errors import InferenceError
    from edgefleet.trust.metadata import ModelManifest

    with_v1_serving(device)
    v2 = make_model(device.folder, "m", "2", seed=2)
    device.controller.publish(v2)
    path = _bundle(device, v2, device.folder / "m2.bundle")
    tested: list[str] = []

    def failing(manifest: ModelManifest) -> float:
        tested.append(manifest.ref)
        raise InferenceError("cannot load m-2.gguf: unknown model architecture")

    with pytest.raises(InferenceError, match="m@2 failed its smoke test .*; m@1 keeps serving"):
        import_bundle(device.registry, device.config, device.fingerprint, path, True, failing)
    assert tested == ["m@2"]
    assert device.registry.active_version("m") == "1" and device.registry.is_installed(v2.manifest)
    records = [json.loads(r) for r in device.registry.audit.all_records()]
    assert ("model.activate", "m@2", "smoke_failed") in [
        (r["action"], r["target"], r["outcome"]) for r in records
    ]
    import_bundle(device.registry, device.config, device.fingerprint, path, True, lambda m: 12.5)
    assert device.registry.active_version("m") == "2"
