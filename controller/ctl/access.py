"""`edgefleetctl operator add`, `policy apply|show|diff` and `tokens create|revoke`: who may
do what, in the fleet's signed policy."""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

from edgefleet.cli_support import Subcommands, handled_by, key_value
from edgefleet.controller.ctl import HELP
from edgefleet.controller.ctl.connect import with_client
from edgefleet.errors import ConfigError
from edgefleet.output import Column, add_output_option, print_list, when

if TYPE_CHECKING:
    from edgefleet.controller.ctl.client import OperatorClient
    from edgefleet.controller.rbac.views import OperatorView


def register_operator(commands: Subcommands) -> None:
    operator = commands.add_parser(
        "operator", aliases=["operators"], help=HELP["operator"]
    ).add_subparsers(dest="action", required=True)
    add_output_option(
        handled_by(
            operator.add_parser("list", help="registered operators and their roles"),
            with_client(_operator_list),
        )
    )
    remove = handled_by(
        operator.add_parser(
            "remove", help="unregister an operator: their certificate is refused from then on"
        ),
        with_client(_operator_remove),
    )
    remove.add_argument("name")
    add = handled_by(
        operator.add_parser("add", help="a credential for a new operator, with a role"),
        with_client(_operator_add),
    )
    add.add_argument("name")
    add.add_argument(
        "--role",
        required=True,
        help="admin, release-manager, device-manager, auditor, viewer or a custom role",
    )
    add.add_argument("--out", type=Path, required=True, help="directory for the new credential")


def register_policy(commands: Subcommands) -> None:
    policy = commands.add_parser("policy", help=HELP["policy"]).add_subparsers(
        dest="action", required=True
    )
    handled_by(
        policy.add_parser("apply", help="validate, version and sign a policy file"),
        with_client(_policy_apply),
    ).add_argument("file", type=Path)
    handled_by(policy.add_parser("show", help="the policy in force"), with_client(_policy_show))
    handled_by(
        policy.add_parser("diff", help="what applying a file would change"),
        with_client(_policy_diff),
    ).add_argument("file", type=Path)


def register_tokens(commands: Subcommands) -> None:
    apps = commands.add_parser("tokens", help=HELP["tokens"]).add_subparsers(
        dest="action", required=True
    )
    app_create = handled_by(
        apps.add_parser("create", help="a token for an application (printed once)"),
        with_client(_tokens_create),
    )
    app_create.add_argument("subject", help="kind:name, e.g. app:sensor-hub")
    app_create.add_argument("--role", required=True, help="a role the policy defines")
    app_create.add_argument("--model", action="append", default=[], help="model name pattern")
    app_create.add_argument(
        "--device",
        type=key_value,
        action="append",
        default=[],
        metavar="K=V",
        help="only on devices with this label",
    )
    handled_by(
        apps.add_parser("revoke", help="revoke a token"), with_client(_tokens_revoke)
    ).add_argument("token_id")


OPERATOR_COLUMNS: tuple[Column[OperatorView], ...] = (
    Column("name", lambda o: o.name),
    Column("role", lambda o: o.role),
    Column("added", lambda o: when(o.created_at)),
    Column("by", lambda o: o.created_by),
    Column("certificate", lambda o: o.certificate_serial, wide=True),
)


def _operator_list(client: OperatorClient, args: argparse.Namespace) -> int:
    print_list(client.list_operators(), OPERATOR_COLUMNS, args.output, asdict)
    return 0


def _operator_remove(client: OperatorClient, args: argparse.Namespace) -> int:
    client.remove_operator(args.name)
    print(f"operator {args.name} removed: their certificate is refused from now on")
    return 0


def _operator_add(client: OperatorClient, args: argparse.Namespace) -> int:
    if args.out.exists():
        raise ConfigError(f"{args.out} already exists: name a new directory for the credential")
    from edgefleet.controller.app.datadir import write_operator_credential
    from edgefleet.tls import key_pem, make_csr, new_tls_key

    key = new_tls_key()
    certificate, ca = client.add_operator(args.name, args.role, make_csr(key))
    try:
        args.out.mkdir(parents=True, mode=0o700)
        write_operator_credential(args.out, key_pem(key), certificate, ca, client.address)
    except OSError as e:
        raise ConfigError(f"cannot write the credential to {args.out}: {e.strerror}") from e
    print(f"operator {args.name} ({args.role}): credential in {args.out / 'edgefleetctl.toml'}")
    return 0


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from e


def _policy_apply(client: OperatorClient, args: argparse.Namespace) -> int:
    version, _ = client.apply_policy(_read_file(args.file))
    print(f"policy version {version} signed; devices enforce it from their next sync")
    return 0


def _policy_show(client: OperatorClient, args: argparse.Namespace) -> int:
    version, document = client.get_policy()
    if not version:
        print("no policy has been applied")
        return 0
    print(json.dumps(json.loads(document), indent=2, sort_keys=True))
    return 0


def _policy_diff(client: OperatorClient, args: argparse.Namespace) -> int:
    from edgefleet.rbac import Policy

    proposed = Policy.from_payload(_with_version(_read_file(args.file)))
    version, document = client.get_policy()
    current = Policy.from_payload(document) if version else None
    if current is not None and "tokens" not in json.loads(_read_file(args.file)):
        proposed = replace(proposed, tokens=current.tokens)
    before = current.readable().splitlines(keepends=True) if current else []
    after = replace(
        proposed, version=version + 1, expires=current.expires if current else None
    ).readable()
    sys.stdout.writelines(
        difflib.unified_diff(before, after.splitlines(keepends=True), "in force", str(args.file))
    )
    return 0


def _with_version(document: bytes) -> bytes:
    try:
        doc = json.loads(document)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"the policy file is not valid JSON: {e}") from e
    if not isinstance(doc, dict):
        raise ConfigError("the policy file must hold a JSON object")
    return json.dumps({**doc, "version": 0}).encode()


def _tokens_create(client: OperatorClient, args: argparse.Namespace) -> int:
    token, token_id, version = client.create_app_token(
        args.subject, args.role, args.model, dict(args.device)
    )
    print(token)
    print(
        f"token {token_id} for {args.subject}, policy version {version}; not shown again",
        file=sys.stderr,
    )
    return 0


def _tokens_revoke(client: OperatorClient, args: argparse.Namespace) -> int:
    version = client.revoke_app_token(args.token_id)
    print(f"revoked {args.token_id}; policy version {version}")
    return 0
