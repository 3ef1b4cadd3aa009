"""`edgefleet-agent models ...`: list, verify, repair, roll back and import models."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgefleet.agent.cli import HELP
from edgefleet.cli_support import Handler, Subcommands, handled_by, positive_int, split_ref
from edgefleet.errors import NotFoundError, TransportError
from edgefleet.output import Column, add_output_option, print_documents, print_list

if TYPE_CHECKING:
    from edgefleet.agent.app.state import LocalState
    from edgefleet.progress import Progress
    from edgefleet.trust.metadata import ModelManifest

EXIT_DAMAGED = 1


def register(commands: Subcommands) -> None:
    """`models list|verify|repair|rollback|import`."""
    models = commands.add_parser("models", help=HELP["models"]).add_subparsers(
        dest="action", required=True
    )
    add_output_option(
        handled_by(
            models.add_parser("list", help="installed versions and which one is active"),
            _with_state(_list),
        )
    )
    wait = handled_by(
        models.add_parser(
            "wait", help="wait until NAME@VERSION is active (for scripts: exit 0, or 1 on timeout)"
        ),
        _with_state(_wait),
    )
    wait.add_argument("ref", metavar="NAME@VERSION")
    wait.add_argument("--timeout", type=positive_int, default=600, help="seconds (default 600)")
    verify = handled_by(
        models.add_parser("verify", help="check installed blobs against their manifests"),
        _with_state(_verify),
    )
    verify.add_argument("name", nargs="?", help="only this model")
    verify.add_argument(
        "--mode", choices=("size", "sample", "full"), default="full", help="default: full"
    )
    repair = handled_by(
        models.add_parser(
            "repair", help="re-fetch only the damaged chunks of damaged or quarantined blobs"
        ),
        _with_state(_repair),
    )
    repair.add_argument("name", nargs="?", help="only this model")
    repair.add_argument("--from-bundle", type=Path, help="take the chunks from a bundle file")
    rollback = handled_by(
        models.add_parser("rollback", help="switch back to the previous version"),
        _with_state(_rollback),
    )
    rollback.add_argument("name")
    imported = handled_by(
        models.add_parser("import", help="install a bundle file, fully offline"),
        _with_state(_import),
    )
    imported.add_argument("file", type=Path)
    imported.add_argument("--no-activate", action="store_true", help="install only")
    add_output_option(imported)


def _selected(state: LocalState, name: str | None) -> list[ModelManifest]:
    manifests = [m for m in state.registry.manifests() if name in (None, m.name)]
    if name is not None and not manifests:
        raise NotFoundError(f"no version of {name} is installed")
    return manifests


def _list(state: LocalState, args: argparse.Namespace) -> int:
    documents = [
        {
            "name": m.name,
            "version": m.version,
            "sha256": m.sha256,
            "active": m.active,
            "quarantined": state.blobs.quarantined_of(m.sha256).exists(),
        }
        for m in state.registry.installed()
    ]
    columns: tuple[Column[dict[str, Any]], ...] = (
        Column("model", lambda d: f"{d['name']}@{d['version']}"),
        Column("active", lambda d: "*" if d["active"] else ""),
        Column("sha256", lambda d: d["sha256"][:16] + "…"),
        Column(
            "state", lambda d: "QUARANTINED (run `models repair`)" if d["quarantined"] else "ok"
        ),
    )
    print_list(documents, columns, args.output, lambda d: d, empty="no models installed")
    return 0


WAIT_POLL_SECONDS = 1.0


def _wait(state: LocalState, args: argparse.Namespace) -> int:
    """Poll the registry (the running agent installs and activates) until the version is
    active; say on stderr how its download goes when that changes."""
    import time

    from edgefleet.agent.sync.progress import load_board

    name, version = split_ref(args.ref)
    deadline = time.monotonic() + args.timeout
    said = ""
    while True:
        if any(m.name == name and m.version == version and m.active
               for m in state.registry.installed()):  # fmt: skip
            print(f"{name}@{version} is active")
            return 0
        board = [d for d in load_board(state.db) if (d.name, d.version) == (name, version)]
        news = ""
        if board:
            d = board[0]
            percent = f" {100 * d.received // d.total} %" if d.total else ""
            news = f"{name}@{version}: {d.state}{percent}" + (f" ({d.reason})" if d.reason else "")
        if news and news != said:
            print(news, file=sys.stderr)
            said = news
        if time.monotonic() >= deadline:
            where = f" ({said})" if said else " (not assigned to this device yet?)"
            raise TransportError(
                f"timed out after {args.timeout} s waiting for {name}@{version} to be active{where}"
            )
        time.sleep(WAIT_POLL_SECONDS)


def _verify(state: LocalState, args: argparse.Namespace) -> int:
    status = 0
    for manifest in _selected(state, args.name):
        result = state.registry.verify(manifest, args.mode)
        if result.ok:
            print(f"ok       {manifest.ref}")
        else:
            status = EXIT_DAMAGED
            print(f"DAMAGED  {manifest.ref}: {result.reason} (quarantined)")
    return status


async def _repair_all(
    state: LocalState, args: argparse.Namespace, manifests: list[ModelManifest]
) -> int:
    import asyncio

    from edgefleet.agent.app.config import load_agent_config
    from edgefleet.agent.app.service import sync_client
    from edgefleet.agent.sync.fetch import BlobSource, Fetcher
    from edgefleet.bundle import BundleFile

    config = load_agent_config(args.data_dir)
    fetcher = Fetcher(state.blobs, config.download_stall_seconds)
    bundle = BundleFile(args.from_bundle) if args.from_bundle else None
    client = None if bundle else sync_client(config, state)
    source: BlobSource = bundle if bundle is not None else client  # type: ignore[assignment]
    try:
        for manifest in manifests:
            transfer = await fetcher.repair(source, manifest)
            await asyncio.to_thread(
                state.registry.record_repaired,
                manifest,
                transfer.repaired_chunks,
                transfer.bytes_received,
            )
            print(
                f"repaired {manifest.ref}: {len(transfer.repaired_chunks)} chunk(s), "
                f"{transfer.bytes_received} bytes fetched"
            )
    finally:
        if client is not None:
            await client.close()
        if bundle is not None:
            bundle.close()
    return 0


def _repair(state: LocalState, args: argparse.Namespace) -> int:
    import asyncio

    damaged = []
    for manifest in _selected(state, args.name):
        if not state.registry.verify(manifest, "full").ok:
            damaged.append(manifest)
    if not damaged:
        print("nothing to repair")
        return 0
    return asyncio.run(_repair_all(state, args, damaged))


def _rollback(state: LocalState, args: argparse.Namespace) -> int:
    rolled_back, active = state.registry.rollback(args.name)
    print(f"{args.name}: {rolled_back} -> {active} (sync keeps {rolled_back} off until reassigned)")
    return 0


def _import(state: LocalState, args: argparse.Namespace) -> int:
    from edgefleet.agent.app.config import load_agent_config
    from edgefleet.agent.inference.smoke import smoke_test
    from edgefleet.agent.registry.bundles import import_bundle

    config = load_agent_config(args.data_dir)
    fingerprint = state.paths.identity.load().root_fingerprint
    smoke = None
    if config.smoke_test:  # the same test a synced version passes before it serves
        smoke = lambda m: smoke_test(state.blobs.path_of(m.sha256), config.n_threads)  # noqa: E731
    bar = _ImportProgress(args.output)
    try:
        result = import_bundle(
            state.registry, config, fingerprint, args.file, not args.no_activate, smoke, bar
        )
    finally:
        bar.close()
    if args.output in ("json", "yaml"):
        document = {
            "model": result.manifest.ref,
            "sha256": result.manifest.sha256,
            "already_installed": result.already_installed,
            "activated": result.activated,
        }
        print_documents(document, args.output)
        return 0
    how = "already installed" if result.already_installed else "installed"
    active = ", active" if result.activated else ""
    print(f"{result.manifest.ref}: verified, {how}{active}")
    return 0


class _ImportProgress:
    """The copy out of a bundle, as a progress bar on a terminal (or JSON lines)."""

    def __init__(self, output: str) -> None:
        self.output = output
        self.bar: Progress | None = None
        self.received = 0

    def update(self, manifest: ModelManifest, received: int) -> None:
        from edgefleet.progress import Progress

        if self.bar is None:
            self.bar = Progress(manifest.ref, manifest.length, self.output)
        self.bar.update(received - self.received)
        self.received = received

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _with_state(action: Callable[[LocalState, argparse.Namespace], int]) -> Handler:
    """The handler that runs one `models` action on the local stores, closed afterwards."""

    def handler(args: argparse.Namespace) -> int:
        from edgefleet.agent.app.state import LocalState

        state = LocalState.open(args.data_dir)
        try:
            return action(state, args)
        finally:
            state.audit.flush()
            state.db.dispose()

    return handler
