"""Before any byte of a model is fetched (by a sync or from a bundle): can this device
hold it at all? Size limit, memory budget and free disk, with the numbers in the refusal."""

from __future__ import annotations

import shutil

from agent.config import AgentConfig
from agent.registry.blobs import BlobStore
from edgefleet.errors import ResourceError
from edgefleet.memory import MIB, estimate_memory, require_fit
from edgefleet.trust.metadata import ModelManifest

DISK_RESERVE = 256 * MIB


def check_before_download(config: AgentConfig, blobs: BlobStore, manifest: ModelManifest) -> None:
    """Raise ResourceError if ``manifest`` is over the size limit, the memory budget (with
    the context and slots the pool would give it) or the free disk."""
    if manifest.length > config.max_model_bytes:
        raise ResourceError(
            f"{manifest.ref} has {manifest.length} bytes, over max_model_bytes "
            f"{config.max_model_bytes}"
        )
    estimate = estimate_memory(
        manifest.length, manifest.kv_bytes_per_token, config.n_ctx, config.n_parallel
    )
    require_fit(manifest.ref, estimate, config.resolved_memory_budget)
    partial = blobs.partial_of(manifest.sha256)
    have = partial.stat().st_size if partial.exists() else 0
    free = shutil.disk_usage(blobs.partials).free
    if manifest.length - have + DISK_RESERVE > free:
        raise ResourceError(
            f"{manifest.ref} needs {(manifest.length - have) / MIB:.0f} MiB more disk, "
            f"{free / MIB:.0f} MiB free (keeping {DISK_RESERVE / MIB:.0f} MiB in reserve)"
        )
