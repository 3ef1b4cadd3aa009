"""Is a stored model blob still the file its signed manifest names?

Three costs: ``size`` (a ``stat``), ``sample`` (the first, the last and a few random
chunks against the signed chunk index), ``full`` (every chunk). A blob whose chunk index
is missing or damaged is checked by its whole-file SHA-256 instead.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from edgefleet.agent.registry.blobs import BlobStore
from edgefleet.trust.metadata import ModelManifest


@dataclass(frozen=True)
class Integrity:
    """The outcome of one check."""

    ref: str
    ok: bool
    reason: str = ""
    bad_chunks: tuple[int, ...] = ()


def check_blob(blobs: BlobStore, manifest: ModelManifest, mode: str, sample: int) -> Integrity:
    """Check the stored blob of ``manifest`` at the cost ``mode`` names."""
    path = blobs.path_of(manifest.sha256)
    if not path.exists():
        quarantined = blobs.quarantined_of(manifest.sha256).exists()
        return Integrity(manifest.ref, False, "quarantined" if quarantined else "missing")
    size = path.stat().st_size
    if size != manifest.length:
        return Integrity(
            manifest.ref, False, f"size {size} bytes, its manifest says {manifest.length}"
        )
    if mode == "size":
        return Integrity(manifest.ref, True)
    index = blobs.chunk_index(manifest)
    if index is None:
        if blobs.whole_file_matches(path, manifest):
            return Integrity(manifest.ref, True)
        return Integrity(manifest.ref, False, "SHA-256 differs from its manifest")
    if mode == "full":
        bad = index.bad_chunks(path)
    else:
        count = len(index.digests)
        chosen = {0, count - 1, *random.sample(range(count), min(sample, count))}
        bad = []
        with path.open("rb") as handle:
            for number in sorted(chosen):
                offset, length = index.span(number, manifest.length)
                handle.seek(offset)
                if not index.matches(number, handle.read(length)):
                    bad.append(number)
    if bad:
        shown = ", ".join(str(n) for n in bad[:8]) + (" …" if len(bad) > 8 else "")
        return Integrity(manifest.ref, False, f"{len(bad)} damaged chunk(s): {shown}", tuple(bad))
    return Integrity(manifest.ref, True)
