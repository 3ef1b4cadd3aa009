"""The operator commands of `edgefleetctl`: one function per (command, action)."""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from pathlib import Path

from controller.app.datadir import write_operator_credential
from controller.ctl.client import OperatorClient
from controller.ctl.quantize import report_command
from controller.ctl.rollouts import ROLLOUT_OPERATIONS
from controller.rbac.policies import pretty
from edgefleet.audit_export import render, verify_export
from edgefleet.bundle import BundleHeader, write_bundle
from edgefleet.cli_support import split_ref
from edgefleet.errors import ConfigError, NotFoundError, TransportError
from edgefleet.fleet import DeviceView
from edgefleet.rbac import Policy
from edgefleet.tls import key_pem, make_csr, new_tls_key
from edgefleet.trust.metadata import Targets, parse_time

Operation = Callable[[OperatorClient, argparse.Namespace], int]


def _token_create(client: OperatorClient, args: argparse.Namespace) -> int:
    token, expires = client.create_token(dict(args.label), args.ttl)
    print(token)
    print(f"expires {expires}", file=sys.stderr)
    return 0


def _models_publish(client: OperatorClient, args: argparse.Namespace) -> int:
    r = client.publish(args.file, args.name, args.version)
    print(
        f"published {r.name}@{r.version} sha256={r.sha256} length={r.length} "
        f"arch={r.architecture} params={r.parameter_count} quant={r.quantization} "
        f"ctx={r.context_length} targets_version={r.targets_version}"
    )
    return 0


def _print_device(v: DeviceView, detail: bool) -> None:
    models = ", ".join(f"{m.name}@{m.version}{'*' if m.active else ''}" for m in v.models)
    seen = (v.last_seen or "never") + (" STALE" if v.stale else "")
    print(
        f"{v.device_id:<22} {v.hostname[:20]:<20} {seen:<33} "
        f"{v.audit_stored_seq:>6}  {models or '-'}"
    )
    pad = " " * 22
    active = {(m.name, m.version) for m in v.models if m.active}
    for a in v.assignments:
        if (a.name, a.version) not in active:
            print(f"{pad} to run {a.name}@{a.version} (not active yet)")
    if v.audit_head_seq > v.audit_stored_seq:
        print(f"{pad} audit backlog: {v.audit_head_seq - v.audit_stored_seq} record(s)")
    r = v.resources
    if r.known:
        print(
            f"{pad} {r.device_class}; model memory budget {r.memory_budget / 1048576:.0f}"
            f" MiB, disk free {r.disk_free / 1048576:.0f} MiB"
        )
    for b in v.bench:
        print(
            f"{pad} {b.model}@{b.version}: pp {b.prompt_tokens_per_second:.0f} tok/s, "
            f"tg {b.generation_tokens_per_second:.0f} tok/s ({b.threads} threads)"
        )
    for d in v.downloads:
        percent = 100 * d.received / d.total if d.total else 0
        why = f": {d.reason}" if d.reason else ""
        print(f"{pad} {d.name}@{d.version} {d.state} {percent:.0f} %{why}")
    if v.daily_data_budget:
        print(
            f"{pad} data today: {v.data_used_today / 1048576:.0f} of "
            f"{v.daily_data_budget / 1048576:.0f} MiB"
        )
    if detail:
        print(f"{pad} agent {v.agent_version or '?'}; labels {v.labels}")
        for h in v.health:
            speed = f", smoke {h.smoke_tokens_per_second:.1f} tok/s" if h.smoke else ""
            why = f" ({h.smoke_reason})" if h.smoke_reason else ""
            print(
                f"{pad} {h.name}@{h.version}: smoke {h.smoke or 'not run'}{why}{speed}, "
                f"{h.requests} requests, {h.errors} failed"
            )
    if v.state != "active":
        print(f"{pad} state: {v.state}")
    if v.audit_alert:
        print(f"{pad} AUDIT TAMPER ALERT: {v.audit_alert}")
    if v.last_error:
        print(f"{pad} last error: {v.last_error}")


def _devices_list(client: OperatorClient, args: argparse.Namespace) -> int:
    views = client.list_devices()
    if args.json:
        print(json.dumps([asdict(v) for v in views], indent=2))
        return 0
    print(f"{'DEVICE':<22} {'HOSTNAME':<20} {'LAST SEEN':<33} {'AUDIT':>6}  MODELS")
    for v in views:
        _print_device(v, detail=False)
    return 0


def _devices_show(client: OperatorClient, args: argparse.Namespace) -> int:
    view = next(iter(client.list_devices(args.device_id)), None)
    if view is None:
        raise NotFoundError(f"device {args.device_id} is not enrolled")
    if args.json:
        print(json.dumps(asdict(view), indent=2))
        return 0
    _print_device(view, detail=True)
    return 0


def _bundle_export(client: OperatorClient, args: argparse.Namespace) -> int:
    name, version = split_ref(args.ref)
    parts = client.export_bundle(name, version)
    kind, data = next(parts, ("", b""))
    if kind != "header":
        raise TransportError("the bundle export did not start with its header")
    header = BundleHeader.from_bytes(data)
    manifest = Targets.from_payload(header.targets.payload).models.get(f"{name}@{version}")
    kind, index = next(parts, ("", b""))
    if manifest is None or kind != "chunk_index":
        raise TransportError("the bundle export is missing its manifest or chunk index")

    def blob() -> Iterator[bytes]:
        for kind, data in parts:
            if kind != "data":
                raise TransportError(f"unexpected {kind!r} part in a bundle export")
            yield data

    partial = args.out.with_name(args.out.name + ".partial")
    try:
        with partial.open("wb") as out:
            write_bundle(
                out, header, index, manifest.chunks_sha256, manifest.sha256, manifest.length, blob()
            )
            out.flush()
            os.fsync(out.fileno())
        partial.replace(args.out)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    print(f"wrote {args.out}: {manifest.ref} ({manifest.length} bytes) sha256={manifest.sha256}")
    return 0


def _audit_export(client: OperatorClient, args: argparse.Namespace) -> int:
    for bound in (args.since, args.until):
        if bound:
            parse_time(bound, "--since/--until")
    spool = args.out.with_name(args.out.name + ".records")
    header, count = b"", 0
    try:
        with spool.open("w+b") as records:
            for record, trailer in client.export_audit(args.device, args.since, args.until):
                if trailer:
                    header = trailer
                else:
                    records.write(record + b"\n")
                    count += 1
            if not header:
                raise TransportError("the export ended without its signed manifest")
            records.seek(0)
            lines = (line.rstrip(b"\n") for line in records)
            partial = args.out.with_name(args.out.name + ".partial")
            with partial.open("wb") as out:
                for block in render(header, lines, args.format):
                    out.write(block)
                out.flush()
                os.fsync(out.fileno())
            partial.replace(args.out)
    finally:
        spool.unlink(missing_ok=True)
    print(f"exported {count} record(s) to {args.out} ({args.format}, signed manifest)")
    return 0


def _audit_query(client: OperatorClient, args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= 10_000:
        raise ConfigError("--limit must be between 1 and 10000")
    records, truncated = client.query_audit(
        args.device, args.actor, args.record_action, args.since, args.until, args.limit
    )
    for raw in records:
        if args.json:
            print(raw.decode("utf-8"))
            continue
        r = json.loads(raw)
        print(
            f"{r['time']}  {r['device']:<22} #{r['seq']:<5} {r['actor']:<24} {r['action']:<18} "
            f"{r['target']}  {r['outcome']}"
        )
    if truncated:
        print(
            f"(more than {args.limit} records matched; narrow the query or raise --limit)",
            file=sys.stderr,
        )
    return 0


def _audit_clear_alert(client: OperatorClient, args: argparse.Namespace) -> int:
    cleared = client.clear_audit_alert(args.device_id, args.reason)
    print(
        f"{args.device_id}: {cleared} alert(s) cleared; the chain takes records again "
        "(exports of the flagged ranges still say so)"
    )
    return 0


# `audit verify` exits 0 when every record verifies and every device record is covered by
# its device's own signature; 1 on any problem; 3 when the records verify but some are
# vouched for by the controller's audit key alone (or lie in a cleared tamper alert).
QUALIFIED_EXIT = 3


def audit_verify(args: argparse.Namespace) -> int:
    try:
        data = args.file.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {args.file}: {e.strerror}") from e
    report = verify_export(data, args.root_fingerprint.strip().lower())
    for problem in report.problems:
        print(f"FAIL {problem}")
    for qualification in report.qualifications:
        print(f"NOTE {qualification}")
    for chain, keyid in sorted(report.device_keys.items()):
        print(f"key  {chain}: device audit key {keyid[:16]}")
    chains = ", ".join(f"{c}: {n}" for c, n in sorted(report.chains.items()))
    if not report.ok:
        verdict = f"{len(report.problems)} problem(s)"
    elif report.qualifications:
        verdict = f"verified with {len(report.qualifications)} note(s)"
    else:
        verdict = "verified"  # and every device record is attested by its device
    print(f"{report.records} record(s) in {len(report.chains)} chain(s) ({chains}): {verdict}")
    if not report.ok:
        return 1
    return QUALIFIED_EXIT if report.qualifications else 0


def _devices_state(client: OperatorClient, args: argparse.Namespace) -> int:
    if getattr(args, "all_pending", False):
        if args.device_id:
            raise ConfigError("give a device id or --all-pending, not both")
        count = client.reject_pending(args.source)
        print(f"{count} pending device(s) rejected")
        return 0
    if not args.device_id:
        raise ConfigError(f"devices {args.action} needs a device id")
    if getattr(args, "source", ""):
        raise ConfigError("--from goes with --all-pending")
    print(f"{args.device_id}: {client.set_device_state(args.device_id, args.action)}")
    return 0


def _devices_preauthorize(client: OperatorClient, args: argparse.Namespace) -> int:
    client.preauthorize(args.fingerprint.strip().lower(), dict(args.label))
    print(f"key {args.fingerprint[:16]}… may enroll without a token")
    return 0


def _operator_add(client: OperatorClient, args: argparse.Namespace) -> int:
    if args.out.exists():
        raise ConfigError(f"{args.out} already exists: name a new directory for the credential")
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
    proposed = Policy.from_payload(_with_version(_read_file(args.file)))
    version, document = client.get_policy()
    current = Policy.from_payload(document) if version else None
    if current is not None and "tokens" not in json.loads(_read_file(args.file)):
        proposed = replace(proposed, tokens=current.tokens)
    before = pretty(current).splitlines(keepends=True) if current else []
    after = pretty(
        replace(proposed, version=version + 1, expires=current.expires if current else None)
    )
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


OPERATIONS: dict[tuple[str, str], Operation] = {
    **ROLLOUT_OPERATIONS,
    ("token", "create"): _token_create,
    ("models", "publish"): _models_publish,
    ("models", "report"): report_command,
    ("devices", "list"): _devices_list,
    ("devices", "show"): _devices_show,
    ("devices", "accept"): _devices_state,
    ("devices", "reject"): _devices_state,
    ("devices", "revoke"): _devices_state,
    ("devices", "preauthorize"): _devices_preauthorize,
    ("operator", "add"): _operator_add,
    ("policy", "apply"): _policy_apply,
    ("policy", "show"): _policy_show,
    ("policy", "diff"): _policy_diff,
    ("tokens", "create"): _tokens_create,
    ("tokens", "revoke"): _tokens_revoke,
    ("audit", "export"): _audit_export,
    ("audit", "query"): _audit_query,
    ("audit", "clear-alert"): _audit_clear_alert,
    ("bundle", "export"): _bundle_export,
}
