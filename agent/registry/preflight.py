"""Before any byte of a model is fetched (by a sync or from a bundle): can this device
hold it at all? Size limit, memory budget and free disk, with the numbers in the refusal."""

from __future__ import annotations

import os
import platform
import shutil

from edgefleet.agent.app.config import AgentConfig
from edgefleet.agent.registry.blobs import BlobStore
from edgefleet.errors import ResourceError
from edgefleet.fit import why_not_fit
from edgefleet.fleet import DeviceResources
from edgefleet.trust.metadata import ModelManifest


def device_resources(config: AgentConfig, blobs: BlobStore) -> DeviceResources:
    """This device's resources as the controller is told them."""
    return DeviceResources(
        machine=platform.machine(),
        cpu_count=os.cpu_count() or 1,
        memory_total=os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        memory_budget=config.resolved_memory_budget,
        context=config.n_ctx,
        slots=config.n_parallel,
        disk_free=shutil.disk_usage(blobs.partials).free,
        max_model_bytes=config.max_model_bytes,
    )


def check_before_download(config: AgentConfig, blobs: BlobStore, manifest: ModelManifest) -> None:
    """Raise ResourceError if ``manifest`` is over the size limit, the memory budget (with
    the context and slots the pool would give it) or the free disk."""
    partial = blobs.partial_of(manifest.sha256)
    if blobs.has(manifest.sha256, manifest.length):
        have = manifest.length  # the same file is in the store already (another version)
    else:
        have = partial.stat().st_size if partial.exists() else 0
    reason = why_not_fit(manifest, device_resources(config, blobs), have)
    if reason is not None:
        raise ResourceError(reason)
