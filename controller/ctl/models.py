"""`edgefleetctl models publish|quantize|report`, `bundle export` (a model for an air-gapped
site) and `agent-bundle build|sign` (the agent for one)."""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from edgefleet.cli_support import Subcommands, handled_by, output_file, split_ref
from edgefleet.controller.ctl import HELP
from edgefleet.controller.ctl.connect import with_client
from edgefleet.controller.ctl.quantize import add_quantize_parser
from edgefleet.errors import TransportError
from edgefleet.output import Column, add_output_option, print_documents, print_list, when

if TYPE_CHECKING:
    from edgefleet.controller.catalog.published import CatalogEntry
    from edgefleet.controller.ctl.client import OperatorClient


def register_models(commands: Subcommands) -> None:
    models = commands.add_parser("models", help=HELP["models"]).add_subparsers(
        dest="action", required=True
    )
    publish = handled_by(
        models.add_parser("publish", help="hash, check, sign and store a GGUF model"),
        with_client(_models_publish),
    )
    publish.add_argument("file", type=Path)
    publish.add_argument("--name", required=True)
    publish.add_argument("--version", required=True)
    add_output_option(publish)
    listed = handled_by(
        models.add_parser("list", help="published versions and how many devices use each"),
        with_client(_models_list),
    )
    listed.add_argument("name", nargs="?", default="", help="only this model")
    add_output_option(listed)
    show = handled_by(
        models.add_parser("show", help="one version: its facts and the devices using it"),
        with_client(_models_show),
    )
    show.add_argument("ref", metavar="NAME@VERSION")
    add_output_option(show)
    rm = handled_by(
        models.add_parser(
            "rm", help="take a version out of the catalog (devices uninstall it at their next sync)"
        ),
        with_client(_models_rm),
    )
    rm.add_argument("ref", metavar="NAME@VERSION")
    rm.add_argument(
        "--force",
        action="store_true",
        help="even while devices are assigned it, a rollout names it or a pin holds it",
    )
    add_quantize_parser(models)


CATALOG_COLUMNS: tuple[Column[CatalogEntry], ...] = (
    Column("model", lambda e: f"{e.name}@{e.version}"),
    Column("size", lambda e: f"{e.length / 1048576:.1f} MiB"),
    Column("quant", lambda e: e.quantization),
    Column("published", lambda e: when(e.published_at)),
    Column("running", lambda e: e.running),
    Column("assigned", lambda e: e.assigned),
    Column("sha256", lambda e: e.sha256, wide=True),
)


def _models_list(client: OperatorClient, args: argparse.Namespace) -> int:
    entries = client.list_models(args.name)
    print_list(entries, CATALOG_COLUMNS, args.output, _catalog_document, "no models published")
    return 0


def _catalog_document(entry: CatalogEntry) -> dict[str, object]:
    document = asdict(entry)
    del document["running_on"], document["assigned_to"]  # counts only in lists
    return document


def _models_show(client: OperatorClient, args: argparse.Namespace) -> int:
    name, version = split_ref(args.ref)
    [entry] = client.list_models(name, version)
    if args.output in ("json", "yaml"):
        print_documents(asdict(entry), args.output)
        return 0
    for key, value in (
        ("model", f"{entry.name}@{entry.version}"),
        ("sha256", entry.sha256),
        ("size", f"{entry.length} bytes ({entry.length / 1048576:.1f} MiB)"),
        ("quantization", entry.quantization),
        ("published", when(entry.published_at)),
        ("running on", " ".join(entry.running_on) or "-"),
        ("assigned to", " ".join(entry.assigned_to) or "-"),
    ):
        print(f"{key + ':':<14}{value}")
    return 0


def _models_rm(client: OperatorClient, args: argparse.Namespace) -> int:
    name, version = split_ref(args.ref)
    removed = client.remove_model(name, version, args.force)
    print(
        f"{name}@{version} removed: targets v{removed.targets_version} no longer list it; "
        "devices uninstall it at their next sync"
    )
    if removed.devices:
        print(f"unassigned from {len(removed.devices)} device(s)", file=sys.stderr)
    if removed.rollouts:
        aborted = ", ".join(str(r) for r in removed.rollouts)
        print(f"rollout(s) aborted: {aborted}", file=sys.stderr)
    return 0


def register_bundle(commands: Subcommands) -> None:
    bundle = commands.add_parser("bundle", help=HELP["bundle"]).add_subparsers(
        dest="action", required=True
    )
    bundle_export = handled_by(
        bundle.add_parser(
            "export", help="one file with NAME@VERSION and its signed metadata chain"
        ),
        with_client(_bundle_export),
    )
    bundle_export.add_argument("ref", metavar="NAME@VERSION")
    bundle_export.add_argument("--out", type=output_file, required=True)
    add_output_option(bundle_export)


def register_agent_bundle(commands: Subcommands) -> None:
    agent_bundle = commands.add_parser("agent-bundle", help=HELP["agent-bundle"]).add_subparsers(
        dest="action", required=True
    )
    build = handled_by(
        agent_bundle.add_parser(
            "build", help="the agent, its dependencies and llama.cpp for one platform (network)"
        ),
        _agent_bundle_build,
    )
    build.add_argument("--arch", choices=("aarch64", "x86_64"), required=True)
    build.add_argument("--llama-dir", type=Path, help="the llama.cpp wheels (make wheels-arm64)")
    build.add_argument("--out", type=output_file, required=True)
    sign_bundle = handled_by(
        agent_bundle.add_parser(
            "sign", help="sign a bundle for this fleet with the controller's targets key(s)"
        ),
        _agent_bundle_sign,
    )
    sign_bundle.add_argument("bundle", type=Path)
    sign_bundle.add_argument("--data-dir", type=Path, required=True)
    sign_bundle.add_argument("--out", type=output_file, required=True)


def _agent_bundle_build(args: argparse.Namespace) -> int:
    from edgefleet.controller.catalog.agent_bundles import build_bundle

    release = build_bundle(args.arch, args.out, args.llama_dir)
    size = args.out.stat().st_size / 1024**2
    builds = ", ".join(b.name for b in release.llama)
    print(f"{args.out}: agent {release.version} for {release.arch}, {len(release.files)} "
          f"files, {size:.0f} MiB, llama.cpp builds: {builds} (unsigned)")  # fmt: skip
    return 0


def _agent_bundle_sign(args: argparse.Namespace) -> int:
    from edgefleet.controller.catalog.agent_bundles import sign_bundle

    release = sign_bundle(args.bundle, args.data_dir, args.out)
    installer = hashlib.sha256(_member(args.out, "install.py")).hexdigest()
    print(f"{args.out}: agent {release.version} for {release.arch}, signed for this fleet")
    print(f"install.py sha256 {installer} (check it on site before running it)")
    return 0


def _member(bundle: Path, name: str) -> bytes:
    with tarfile.open(bundle) as tar:
        top = tar.getnames()[0].split("/")[0]
        extracted = tar.extractfile(f"{top}/{name}")
        return extracted.read() if extracted is not None else b""


def _models_publish(client: OperatorClient, args: argparse.Namespace) -> int:
    from edgefleet.progress import Progress

    size = args.file.stat().st_size if args.file.is_file() else 0
    with Progress(f"{args.name}@{args.version}", size, args.output) as progress:
        r = client.publish(args.file, args.name, args.version, sent=progress.update)
    if args.output in ("json", "yaml"):
        print_documents(asdict(r), args.output)
        return 0
    print(
        f"published {r.name}@{r.version} sha256={r.sha256} length={r.length} "
        f"arch={r.architecture} params={r.parameter_count} quant={r.quantization} "
        f"ctx={r.context_length} targets_version={r.targets_version}"
    )
    return 0


def _bundle_export(client: OperatorClient, args: argparse.Namespace) -> int:
    name, version = split_ref(args.ref)
    parts = client.export_bundle(name, version)
    kind, data = next(parts, ("", b""))
    if kind != "header":
        raise TransportError("the bundle export did not start with its header")
    from edgefleet.bundle import BundleHeader, write_bundle
    from edgefleet.trust.metadata import Targets

    header = BundleHeader.from_bytes(data)
    manifest = Targets.from_payload(header.targets.payload).models.get(f"{name}@{version}")
    kind, index = next(parts, ("", b""))
    if manifest is None or kind != "chunk_index":
        raise TransportError("the bundle export is missing its manifest or chunk index")

    from edgefleet.progress import Progress

    progress = Progress(manifest.ref, manifest.length, args.output)

    def blob() -> Iterator[bytes]:
        for kind, data in parts:
            if kind != "data":
                raise TransportError(f"unexpected {kind!r} part in a bundle export")
            progress.update(len(data))
            yield data

    partial = args.out.with_name(args.out.name + ".partial")
    try:
        with progress, partial.open("wb") as out:
            write_bundle(
                out, header, index, manifest.chunks_sha256, manifest.sha256, manifest.length, blob()
            )
            out.flush()
            os.fsync(out.fileno())
        partial.replace(args.out)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    if args.output in ("json", "yaml"):
        document = {"file": str(args.out), "model": manifest.ref, "length": manifest.length}
        print_documents({**document, "sha256": manifest.sha256}, args.output)
        return 0
    print(f"wrote {args.out}: {manifest.ref} ({manifest.length} bytes) sha256={manifest.sha256}")
    return 0
