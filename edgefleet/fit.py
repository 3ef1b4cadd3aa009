"""Can a device hold a model? One rule for the device's pre-flight check before a download
and for the controller choosing which variant of a model family a device gets."""

from __future__ import annotations

from edgefleet.fleet import DeviceResources
from edgefleet.memory import MIB, estimate_memory, fits
from edgefleet.trust.metadata import ModelManifest

DISK_RESERVE = 256 * MIB


def why_not_fit(manifest: ModelManifest, resources: DeviceResources, have: int = 0) -> str | None:
    """The reason, with the numbers, why ``manifest`` cannot go on a device with
    ``resources`` (``have`` bytes of it already on disk), or None when it fits."""
    if manifest.length > resources.max_model_bytes:
        return (
            f"{manifest.ref} has {manifest.length} bytes, over max_model_bytes "
            f"{resources.max_model_bytes}"
        )
    estimate = estimate_memory(
        manifest.length, manifest.kv_bytes_per_token, resources.context, resources.slots
    )
    if not fits(estimate, resources.memory_budget):
        return (
            f"{manifest.ref} needs {estimate}, over the memory budget of "
            f"{resources.memory_budget / MIB:.0f} MiB"
        )
    if manifest.length - have + DISK_RESERVE > resources.disk_free:
        return (
            f"{manifest.ref} needs {(manifest.length - have) / MIB:.0f} MiB more disk, "
            f"{resources.disk_free / MIB:.0f} MiB free (keeping {DISK_RESERVE / MIB:.0f} MiB "
            "in reserve)"
        )
    return None
