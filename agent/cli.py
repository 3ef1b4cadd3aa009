"""`edgefleet-agent`: enroll the device, run the daemon, inspect the registry, chat locally."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from agent.config import DEFAULT_DATA_DIR, load_agent_config
from agent.enroll import AgentPaths, EnrollmentPending, enroll
from agent.inference.bench import run_bench, save_result
from agent.models_cli import add_parsers as add_models_parsers
from agent.offline import fresh_at
from agent.policy import LocalPolicy
from agent.service import LocalState, run
from agent.sync.metering import USED_KEY
from agent.sync.progress import load_board
from agent.sync.worker import LAST_ERROR_KEY, LAST_SYNC_KEY, RECEIPT_KEY
from edgefleet.audit import AuditEvent
from edgefleet.audit_export import ExportBuilder, render
from edgefleet.cli_support import (
    add_completion_command,
    handled_by,
    output_file,
    positive_int,
    run_command,
    run_handler,
)
from edgefleet.errors import ConfigError, TransportError
from edgefleet.logging import configure_logging
from edgefleet.rbac import check_subject
from edgefleet.speed import DEFAULT_GENERATED_TOKENS, DEFAULT_PROMPT_TOKENS, DEFAULT_REPETITIONS
from edgefleet.tls import key_fingerprint
from edgefleet.trust.envelope import Envelope
from edgefleet.trust.metadata import format_time

PROG = "edgefleet-agent"
EXIT_PENDING = 3
PENDING_POLL_SECONDS = 5.0
TOKEN_ENV = "EDGEFLEET_TOKEN"  # noqa: S105 - a variable name


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="The edgefleet agent on a gateway.")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("EDGEFLEET_AGENT_DATA_DIR", DEFAULT_DATA_DIR)),
        help="state directory (env EDGEFLEET_AGENT_DATA_DIR)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add_completion_command(commands)
    enroll_cmd = handled_by(
        commands.add_parser(
            "enroll", help="join the fleet (with a one-time token, or by approval)"
        ),
        _cmd_enroll,
    )
    enroll_cmd.add_argument("--controller", required=True, help="enrollment HOST:PORT")
    enroll_cmd.add_argument("--token", default="", help="omit to ask an operator for approval")
    enroll_cmd.add_argument("--root-fingerprint", required=True)
    enroll_cmd.add_argument(
        "--wait", type=int, default=0, help="seconds to keep asking while approval is pending"
    )
    handled_by(
        commands.add_parser(
            "fingerprint", help="this device's key fingerprint (for preauthorization)"
        ),
        _cmd_fingerprint,
    )
    run_cmd = handled_by(
        commands.add_parser("run", help="serve the local API and sync with the controller"),
        _cmd_run,
    )
    run_cmd.add_argument("--api-listen", help="HOST:PORT of the local API (default 127.0.0.1:8080)")
    run_cmd.add_argument("--sync-interval", type=positive_int, help="seconds between syncs")
    run_cmd.add_argument("--log-level", default="INFO")
    models = commands.add_parser("models", help="the local registry").add_subparsers(
        dest="action", required=True
    )
    add_models_parsers(models)
    chat = handled_by(
        commands.add_parser("chat", help="talk to a model through the running agent's API"),
        _cmd_chat,
    )
    chat.add_argument("model")
    chat.add_argument("prompt", nargs="?", help="one question; without it, an interactive session")
    chat.add_argument("--max-tokens", type=positive_int, default=256)
    chat.add_argument("--temperature", type=float, help="0 for the most likely answer")
    chat.add_argument("--token", help=f"API bearer token (env {TOKEN_ENV})")
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
    handled_by(commands.add_parser("status", help="identity, registry and sync state"), _cmd_status)
    audit = commands.add_parser("audit", help="this device's audit log").add_subparsers(
        dest="action", required=True
    )
    export = handled_by(
        audit.add_parser("export", help="a signed export of the local log (air-gapped sites)"),
        _cmd_audit_export,
    )
    export.add_argument("--out", type=output_file, required=True)
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    bench = handled_by(
        commands.add_parser("bench", help="measure prompt and generation tokens/s of a model"),
        _cmd_bench,
    )
    bench.add_argument("model")
    bench.add_argument("--threads", type=positive_int, help="default: the agent's n_threads")
    bench.add_argument("--prompt-tokens", type=positive_int, default=DEFAULT_PROMPT_TOKENS)
    bench.add_argument("--gen-tokens", type=positive_int, default=DEFAULT_GENERATED_TOKENS)
    bench.add_argument("--repetitions", type=positive_int, default=DEFAULT_REPETITIONS)
    return parser


def _cmd_enroll(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + max(0, args.wait)
    while True:
        try:
            enrollment = enroll(
                AgentPaths(args.data_dir), args.controller, args.token, args.root_fingerprint
            )
            break
        except EnrollmentPending as e:
            if time.monotonic() >= deadline:
                print(f"{PROG}: pending: {e}", file=sys.stderr)
                return EXIT_PENDING
            time.sleep(min(PENDING_POLL_SECONDS, max(0.1, deadline - time.monotonic())))
    controller = f"{enrollment.controller_host}:{enrollment.sync_port}"
    print(f"enrolled as {enrollment.device_id}; controller {controller}")
    return 0


def _cmd_audit_export(args: argparse.Namespace) -> int:
    state = LocalState.open(args.data_dir)
    try:
        identity = state.paths.identity
        enrollment = identity.load()
        if not identity.audit_attestation.exists():
            raise ConfigError("this device has no audit key attestation from the fleet")
        attestation = Envelope.from_json(identity.read(identity.audit_attestation))
        records = state.audit.all_records()
        trust = state.registry.load_trust(enrollment.root_fingerprint)
        builder = ExportBuilder()
        for record in records:
            builder.add(record)
        ranges = builder.ranges().get(enrollment.device_id)
        checkpoints = state.audit.checkpoints_after(ranges[0] - 1) if ranges else []
        _, audit_key = identity.keys()
        header = builder.header(
            trust.root_chain,
            audit_key,
            {enrollment.device_id: audit_key.public.hex},
            {"device": enrollment.device_id, "exported_by": "device"},
            {enrollment.device_id: checkpoints},
            attestation,
        )
    finally:
        state.db.dispose()
    partial = args.out.with_name(args.out.name + ".partial")
    with partial.open("wb") as out:
        for block in render(header, records, args.format):
            out.write(block)
    partial.replace(args.out)
    print(f"exported {len(records)} record(s) of {enrollment.device_id} to {args.out}")
    return 0


def _cmd_fingerprint(args: argparse.Namespace) -> int:
    key, _ = AgentPaths(args.data_dir).identity.keys()
    print(key_fingerprint(key))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    configure_logging("json", args.log_level)
    config = load_agent_config(
        args.data_dir, api_listen=args.api_listen, sync_interval_seconds=args.sync_interval
    )
    asyncio.run(run(config))
    return 0


def _api_base(data_dir: Path) -> str:
    address_file = data_dir / "api.addr"
    if address_file.exists():
        return "http://" + address_file.read_text().strip()
    return "http://" + load_agent_config(data_dir).api_listen


def _cmd_chat(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get(TOKEN_ENV, "")
    url = _api_base(args.data_dir) + "/v1/chat/completions"
    if args.prompt is not None:
        _ask(url, token, args, [{"role": "user", "content": args.prompt}])
        return 0
    print(f"chatting with {args.model}; an empty line or Ctrl-D ends the session", file=sys.stderr)
    history: list[dict[str, str]] = []
    while True:
        try:
            line = input("> ").strip()
        except EOFError:
            print()
            return 0
        if not line:
            return 0
        history.append({"role": "user", "content": line})
        answer = _ask(url, token, args, history)
        history.append({"role": "assistant", "content": answer})


def _ask(url: str, token: str, args: argparse.Namespace, messages: list[dict[str, str]]) -> str:
    """Stream one answer to stdout and return it."""
    body: dict[str, object] = {
        "model": args.model,
        "stream": True,
        "max_tokens": args.max_tokens,
        "messages": messages,
    }
    if args.temperature is not None:
        body["temperature"] = args.temperature
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, json.dumps(body).encode(), headers)  # noqa: S310
    answer = ""
    try:
        with urllib.request.urlopen(request, timeout=300) as response:  # noqa: S310
            for raw in response:
                line = raw.decode("utf-8").strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                piece = json.loads(line[6:])["choices"][0]["delta"].get("content", "")
                answer += piece
                print(piece, end="", flush=True)
    except urllib.error.HTTPError as e:
        message = json.loads(e.read() or b"{}").get("error", {}).get("message", e.reason)
        raise ConfigError(f"the agent refused: {message}") from e
    except urllib.error.URLError as e:
        raise TransportError(f"the agent is not reachable at {url}: {e.reason}") from e
    print()
    return answer


def _cmd_tokens(args: argparse.Namespace) -> int:
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


def _cmd_bench(args: argparse.Namespace) -> int:
    for name in ("prompt_tokens", "gen_tokens", "repetitions"):
        if not 1 <= getattr(args, name) <= 8192:
            raise ConfigError(f"--{name.replace('_', '-')} must be between 1 and 8192")
    config = load_agent_config(args.data_dir)
    state = LocalState.open(args.data_dir)
    try:
        active = next(
            (m for m in state.registry.active_models() if m.manifest.name == args.model), None
        )
        if active is None:
            raise ConfigError(f"model {args.model!r} is not installed and active")
        threads = args.threads or config.n_threads
        print(f"benchmarking {active.manifest.ref} with {threads} thread(s)…", file=sys.stderr)
        result = run_bench(
            active.manifest,
            Path(active.path),
            threads,
            args.prompt_tokens,
            args.gen_tokens,
            args.repetitions,
        )
        save_result(state.db, result)
    finally:
        state.db.dispose()
    print(f"{'model':<24}{'threads':>8}{'test':>8}{'tokens/s':>12}")
    print(
        f"{result.model:<24}{threads:>8}{'pp' + str(result.prompt_tokens):>8}"
        f"{result.prompt_tokens_per_second:>12.1f}"
    )
    print(
        f"{result.model:<24}{threads:>8}{'tg' + str(result.generated_tokens):>8}"
        f"{result.generation_tokens_per_second:>12.1f}"
    )
    print("reported to the controller at the next sync", file=sys.stderr)
    return 0


def _audit_local(data_dir: Path, event: AuditEvent) -> None:
    state = LocalState.open(data_dir)
    try:
        state.audit.append(event)
    finally:
        state.db.dispose()


def _cmd_status(args: argparse.Namespace) -> int:
    state = LocalState.open(args.data_dir)
    try:
        enrollment = state.paths.identity.load()
        print(f"device:        {enrollment.device_id}")
        print(f"controller:    {enrollment.controller_host}:{enrollment.sync_port}")
        print(f"last sync:     {state.db.get_state(LAST_SYNC_KEY) or 'never'}")
        print(f"last error:    {state.db.get_state(LAST_ERROR_KEY) or '-'}")
        disk = shutil.disk_usage(args.data_dir)
        print(f"disk:          {disk.free >> 20} MiB free of {disk.total >> 20} MiB")
        trust = state.registry.load_trust(enrollment.root_fingerprint)
        fresh = fresh_at(state.db)
        print(
            f"trust:         root v{trust.root.version}, "
            f"timestamp v{trust.timestamp.version if trust.timestamp else 0}, "
            f"targets v{trust.targets.version if trust.targets else 0}, "
            f"fresh at {format_time(fresh) if fresh else 'never'}"
        )
        written, acked = state.audit.head_seq(), state.audit.acked_seq()
        receipt = "with the fleet's signed receipt" if state.db.get_state(RECEIPT_KEY) else ""
        print(f"audit:         {written} written, {acked} acknowledged {receipt}".rstrip())
        config = load_agent_config(args.data_dir)
        if written - acked >= config.audit_warn_unacknowledged:
            print(
                f"audit backlog: ALARM, {written - acked} records wait for the controller "
                f"(audit_warn_unacknowledged = {config.audit_warn_unacknowledged})"
            )
        print(f"audit key:     {state.paths.identity.keys()[1].public.keyid[:16]}")
        for download in load_board(state.db):
            percent = 100 * download.received / download.total if download.total else 0
            why = f": {download.reason}" if download.reason else ""
            print(
                f"download:      {download.name}@{download.version} {download.state} "
                f"{download.received}/{download.total} bytes ({percent:.0f} %){why}"
            )
        day, _, used = state.db.get_state(USED_KEY, "").partition(" ")
        if used.isdigit():
            print(f"data used:     {int(used) / 1048576:.1f} MiB on {day} (UTC)")
        for model in state.registry.installed():
            notes = [" (active)" if model.active else ""]
            if state.blobs.quarantined_of(model.sha256).exists():
                notes.append(" QUARANTINED")
            print(f"model:         {model.name}@{model.version}{''.join(notes)}")
    finally:
        state.db.dispose()
    return 0


def _dispatch(args: argparse.Namespace) -> int:
    if args.command != "run":
        configure_logging("console", "WARNING")
    return run_handler(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `edgefleet-agent`."""
    return run_command(PROG, _parser(), argv, _dispatch)


if __name__ == "__main__":
    sys.exit(main())
