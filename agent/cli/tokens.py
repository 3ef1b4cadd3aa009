"""`edgefleet-agent tokens`: application tokens for the local API (the device's policy)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from edgefleet.cli_support import Subcommands, handled_by

if TYPE_CHECKING:
    from edgefleet.audit import AuditEvent


def register(commands: Subcommands) -> None:
    """`tokens create|list|revoke`."""
    tokens = commands.add_parser("tokens", help="application tokens for the local API")
    token_actions = tokens.add_subparsers(dest="action", required=True)
    create = handled_by(
        token_actions.add_parser("create", help="a new token (printed once)"), _cmd_tokens
    )
    create.add_argument("subject", help="who uses it, as kind:name (e.g. app:sensor-hub)")
    create.add_argument("--role", default="inference", help="inference (default) or reader")
    create.add_argument("--model", action="append", default=[], help="model name pattern")
    handled_by(token_actions.add_parser("list", help="token ids and subjects"), _cmd_tokens)
    revoke = handled_by(token_actions.add_parser("revoke", help="remove a token"), _cmd_tokens)
    revoke.add_argument("token_id")


def _cmd_tokens(args: argparse.Namespace) -> int:
    from edgefleet.agent.rbac.policy import LocalPolicy
    from edgefleet.audit import AuditEvent
    from edgefleet.rbac import check_subject

    policy = LocalPolicy(args.data_dir)
    if args.action == "create":
        subject = check_subject(args.subject)
        token, token_id = policy.create_token(subject, args.role, tuple(args.model))
        details = {"subject": subject, "role": args.role, "models": args.model or ["*"]}
        _audit_local(
            args.data_dir, AuditEvent("local:admin", "token.create", token_id, "success", details)
        )
        print(token)
        print(
            f"token {token_id} for {args.subject} ({args.role}); it is not shown again",
            file=sys.stderr,
        )
    elif args.action == "list":
        current = policy.current()
        for entry in current.tokens:
            roles = [
                f"{b.role}:{','.join(b.models)}"
                for b in current.bindings
                if b.subject == entry.subject
            ]
            print(f"{entry.token_id}  {entry.subject}  {' '.join(roles)}")
    else:
        subject = policy.revoke_token(args.token_id)
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
