"""Installing a model from a bundle file, fully offline, with the verification of a sync."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from edgefleet.agent.app.config import AgentConfig
from edgefleet.agent.registry.offline import mark_fresh
from edgefleet.agent.registry.preflight import check_before_download
from edgefleet.agent.registry.registry import Registry
from edgefleet.agent.sync.fetch import Fetcher, ProgressSink
from edgefleet.agent.sync.health import smoke_or_refuse
from edgefleet.audit import AuditEvent
from edgefleet.bundle import BundleFile, BundleHeader
from edgefleet.errors import (
    MalformedInputError,
    ResourceError,
    RollbackError,
    SignatureError,
    UntrustedInputError,
)
from edgefleet.trust.metadata import ModelManifest, Targets
from edgefleet.trust.verifier import TrustedState, root_fingerprint


@dataclass(frozen=True)
class Imported:
    """What an import installed."""

    manifest: ModelManifest
    activated: bool
    already_installed: bool


def import_bundle(
    registry: Registry,
    config: AgentConfig,
    fingerprint: str,
    path: Path,
    activate: bool,
    smoke_test: Callable[[ModelManifest], float] | None = None,
    progress: ProgressSink | None = None,
) -> Imported:
    """Verify and install the model a bundle carries; audit the outcome either way. A
    version is activated only once it passes ``smoke_test`` (as after a sync);
    ``progress`` hears how the copy goes."""
    target = path.name
    try:
        bundle = BundleFile(path)
    except MalformedInputError as e:
        _audit_refusal(registry, target, e)
        raise
    try:
        return _import(
            registry, config, fingerprint, bundle, target, activate, smoke_test, progress
        )
    except (UntrustedInputError, ResourceError) as e:
        _audit_refusal(registry, target, e)
        raise
    finally:
        bundle.close()


def _import(
    registry: Registry,
    config: AgentConfig,
    fingerprint: str,
    bundle: BundleFile,
    target: str,
    activate: bool,
    smoke_test: Callable[[ModelManifest], float] | None,
    progress: ProgressSink | None,
) -> Imported:
    header = bundle.header()
    theirs = root_fingerprint(header.root_chain[0])
    if theirs != fingerprint.lower():
        raise SignatureError(
            f"the bundle belongs to another fleet: its root fingerprint is {theirs[:16]}…, "
            f"this device trusts {fingerprint[:16]}…"
        )
    now = datetime.now(UTC)
    trusted = registry.load_trust(fingerprint)
    name, _, version = header.model.partition("@")
    try:
        state = trusted.update_root_chain(header.root_chain, now).update_snapshot(
            header.timestamp, header.targets, header.policy, now
        )
    except RollbackError:
        # The device already trusts newer metadata (it synced after the export). The
        # bundle's model is still welcome if the metadata it trusts names the same file.
        if not _same_in(trusted, header, name, version):
            raise
        state = trusted
    manifest = state.manifest(name, version)
    check_before_download(config, registry.blobs, manifest)
    if state is not trusted:
        registry.save_trust(state)
        mark_fresh(registry.db, now)
    present = registry.is_installed(manifest)
    if not present:
        fetcher = Fetcher(registry.blobs, config.download_stall_seconds, board=progress)
        if registry.blobs.quarantined_of(manifest.sha256).exists():
            asyncio.run(fetcher.repair(bundle, manifest))
        else:
            asyncio.run(fetcher.download(bundle, manifest))
        registry.record_installed(manifest)
    if activate and registry.active_version(manifest.name) != manifest.version:
        if smoke_test is not None:
            smoke_or_refuse(smoke_test, registry, manifest)  # installed either way
        registry.activate(manifest)
    registry.audit.append(
        AuditEvent(
            "agent",
            "model.import",
            manifest.ref,
            "success",
            {"bundle": target, "sha256": manifest.sha256, "activated": activate},
        )
    )
    return Imported(manifest, activate, present)


def _same_in(trusted: TrustedState, header: BundleHeader, name: str, version: str) -> bool:
    """Does the trusted targets metadata name exactly the manifest the bundle carries?"""
    carried = Targets.from_payload(header.targets.payload).models.get(f"{name}@{version}")
    current = trusted.targets.models.get(f"{name}@{version}") if trusted.targets else None
    return carried is not None and carried == current


def _audit_refusal(registry: Registry, target: str, error: Exception) -> None:
    registry.audit.append(
        AuditEvent(
            "agent",
            "model.import",
            target,
            "verification_failed" if isinstance(error, UntrustedInputError) else "refused",
            {"reason": str(error), "error": type(error).__name__},
        )
    )
