"""`edgefleet-agent tokens`: application tokens for the local API (the device's policy)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgefleet.agent.cli import HELP
from edgefleet.cli_support import Subcommands, handled_by
from edgefleet.output import Column, add_output_option, print_documents, print_list

if TYPE_CHECKING:
    from edgefleet.audit import AuditEvent


def register(commands: Subcommands) -> None:
    """`tokens create|list|revoke`."""
    tokens = commands.add_parser("tokens", help=HELP["tokens"])
    token_actions = tokens.add_subparsers(dest="action", required=True)
    create = handled_by(
        token_actions.add_parser("create", help="a new token (printed once)"), _create
    )
    create.add_argument("subject", help="who uses it, as kind:name (e.g. app:sensor-hub)")
    create.add_argument("--role", default="inference", help="inference (default) or reader")
    create.add_argument("--model", action="append", default=[], help="model name pattern")
    add_output_option(create, name=True)
    add_output_option(
        handled_by(token_actions.add_parser("list", help="token ids and subjects"), _list)
    )
    revoke = handled_by(token_actions.add_parser("revoke", help="remove a token"), _revoke)
    revoke.add_argument("token_id")


def _create(args: argparse.Namespace) -> int:
    """The secret goes to stdout alone (-o name and table), or in the JSON/YAML document;
    it is never shown again."""
    from edgefleet.agent.rbac.policy import LocalPolicy
    from edgefleet.audit import AuditEvent
    from edgefleet.rbac import check_subject

    subject = check_subject(args.subject)
    token, token_id = LocalPolicy(args.data_dir).create_token(subject, args.role, tuple(args.model))
    details = {"subject": subject, "role": args.role, "models": args.model or ["*"]}
    _audit_local(
        args.data_dir, AuditEvent("local:admin", "token.create", token_id, "success", details)
    )
    if args.output in ("json", "yaml"):
        print_documents({"token": token, "token_id": token_id, **details}, args.output)
        return 0
    print(token)
    print(
        f"token {token_id} for {args.subject} ({args.role}); it is not shown again",
        file=sys.stderr,
    )
    return 0


def _list(args: argparse.Namespace) -> int:
    from edgefleet.agent.rbac.policy import LocalPolicy

    current = LocalPolicy(args.data_dir).current()
    documents = [
        {
            "token_id": entry.token_id,
            "subject": entry.subject,
            "roles": [
                {"role": b.role, "models": list(b.models)}
                for b in current.bindings
                if b.subject == entry.subject
            ],
        }
        for entry in current.tokens
    ]
    columns: tuple[Column[dict[str, Any]], ...] = (
        Column("token id", lambda d: d["token_id"]),
        Column("subject", lambda d: d["subject"]),
        Column(
            "roles", lambda d: " ".join(f"{r['role']}:{','.join(r['models'])}" for r in d["roles"])
        ),
    )
    print_list(documents, columns, args.output, lambda d: d, empty="no tokens")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    from edgefleet.agent.rbac.policy import LocalPolicy
    from edgefleet.audit import AuditEvent

    subject = LocalPolicy(args.data_dir).revoke_token(args.token_id)
    event = AuditEvent(
        "local:admin", "token.revoke", args.token_id, "success", {"subject": subject}
    )
    _audit_local(args.data_dir, event)
    print(f"revoked {args.token_id} ({subject})")
    return 0


def _audit_local(data_dir: Path, event: AuditEvent) -> None:
    from edgefleet.agent.app.state import LocalState

    state = LocalState.open(data_dir)
    try:
        state.audit.append(event)
    finally:
        state.db.dispose()
