"""`edgefleetctl keys …`: the fleet's signing keys, on the controller's data directory (or,
for `sign` and `generate`, on the offline machine that holds a root key). The ceremony
itself (controller/ctl/key_ceremony.py) loads only when a `keys` command runs."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from edgefleet.cli_support import Handler, Subcommands, handled_by, output_file, positive_int
from edgefleet.controller.ctl import HELP


def _ceremony(name: str) -> Handler:
    def handler(args: argparse.Namespace) -> int:
        action: Handler = getattr(
            importlib.import_module("edgefleet.controller.ctl.key_ceremony"), name
        )
        return action(args)

    return handler


def register(commands: Subcommands) -> None:
    keys = commands.add_parser("keys", help=HELP["keys"]).add_subparsers(
        dest="action", required=True
    )

    def local(name: str, text: str, handler: Handler) -> argparse.ArgumentParser:
        action = handled_by(keys.add_parser(name, help=text), handler)
        action.add_argument("--data-dir", type=Path, required=True)
        return action

    local(
        "list",
        "roles, thresholds and keys of the current root and the draft",
        _ceremony("list_command"),
    )
    generate = handled_by(
        keys.add_parser("generate", help="a new Ed25519 key file (e.g. for an offline root)"),
        _ceremony("generate_command"),
    )
    generate.add_argument("--out", type=output_file, required=True)
    for name, text, handler in (
        ("add", "let a key sign for a role", _ceremony("add_command")),
        ("rotate", "replace a role's keys", _ceremony("rotate_command")),
    ):
        action = local(name, text, handler)
        action.add_argument("role")
        action.add_argument("--public", help="hex public key (from `keys generate`)")
    revoke = local("revoke", "stop a key signing for a role", _ceremony("revoke_command"))
    revoke.add_argument("role")
    revoke.add_argument("keyid", help="at least 8 leading hex digits")
    threshold = local(
        "threshold", "how many of a role's keys must sign", _ceremony("threshold_command")
    )
    threshold.add_argument("role")
    threshold.add_argument("count", type=positive_int)
    local(
        "renew",
        "the same keys as a new root version with a fresh expiry",
        _ceremony("renew_command"),
    )
    local(
        "show-draft",
        "the draft root, its signatures and what it still needs",
        _ceremony("show_draft_command"),
    )
    export = local(
        "export-draft",
        "write the draft for signing on another machine",
        _ceremony("export_draft_command"),
    )
    export.add_argument("--out", type=output_file, required=True)
    sign = handled_by(
        keys.add_parser("sign", help="sign an exported draft with a key file (offline)"),
        _ceremony("sign_command"),
    )
    sign.add_argument("file", type=Path)
    sign.add_argument("--key", type=Path, required=True)
    local(
        "import-signatures",
        "merge the signatures of a signed draft",
        _ceremony("import_signatures_command"),
    ).add_argument("file", type=Path)
    local(
        "publish",
        "publish the draft once a threshold of old and new root keys signed it",
        _ceremony("publish_command"),
    )
