"""`edgefleetctl`: initialize and serve a controller, and operate it over gRPC."""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

from controller.client import OperatorClient, OperatorCredential
from controller.config import load_controller_config
from controller.datadir import initialize, write_operator_credential
from controller.policies import pretty
from controller.service import serve
from edgefleet.audit_export import render, verify_export
from edgefleet.cli_support import key_value, run_command
from edgefleet.errors import ConfigError, TransportError
from edgefleet.logging import configure_logging
from edgefleet.rbac import Policy
from edgefleet.tls import key_pem, make_csr, new_tls_key
from edgefleet.trust.metadata import parse_time

PROG = "edgefleetctl"
CONFIG_ENV = "EDGEFLEETCTL_CONFIG"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Operate an edgefleet controller.")
    parser.add_argument("--config", type=Path, help=f"operator config file (env {CONFIG_ENV})")
    parser.add_argument("--controller", help="override the controller HOST:PORT of the config")
    commands = parser.add_subparsers(dest="command", required=True)

    init = commands.add_parser("init", help="create a new controller data directory")
    init.add_argument("--data-dir", type=Path, required=True)
    init.add_argument("--fleet-name", default="edgefleet")
    init.add_argument("--host", action="append", default=[], help="extra name/IP for the TLS cert")
    init.add_argument("--advertise", default="127.0.0.1:7443", help="address operators dial")

    serve_cmd = commands.add_parser("serve", help="run the controller's gRPC server")
    serve_cmd.add_argument("--data-dir", type=Path, required=True)
    serve_cmd.add_argument("--listen", help="mTLS HOST:PORT (default 127.0.0.1:7443)")
    serve_cmd.add_argument("--enroll-listen", help="enrollment HOST:PORT (default 127.0.0.1:7444)")
    serve_cmd.add_argument("--database-url", help="SQLAlchemy URL (default SQLite in data dir)")
    serve_cmd.add_argument("--log-level", default="INFO")

    token = commands.add_parser("token", help="enrollment tokens").add_subparsers(
        dest="action", required=True
    )
    create = token.add_parser("create", help="a one-time enrollment token")
    create.add_argument("--label", type=key_value, action="append", default=[], metavar="K=V")
    create.add_argument("--ttl", type=int, default=3600, help="seconds until it expires")

    models = commands.add_parser("models", help="the model catalog").add_subparsers(
        dest="action", required=True
    )
    publish = models.add_parser("publish", help="hash, check, sign and store a GGUF model")
    publish.add_argument("file", type=Path)
    publish.add_argument("--name", required=True)
    publish.add_argument("--version", required=True)

    rollout = commands.add_parser("rollout", help="model rollouts").add_subparsers(
        dest="action", required=True
    )
    rollout_create = rollout.add_parser("create", help="assign NAME@VERSION to matching devices")
    rollout_create.add_argument("ref", metavar="NAME@VERSION")
    rollout_create.add_argument("--selector", type=key_value, action="append", default=[])

    devices = commands.add_parser("devices", help="enrolled devices").add_subparsers(
        dest="action", required=True
    )
    devices_list = devices.add_parser("list", help="every device and its last report")
    devices_list.add_argument("--json", action="store_true")

    for action, text in (
        ("accept", "accept a pending device"),
        ("reject", "reject a pending device"),
        ("revoke", "cut a device off from its next call"),
    ):
        devices.add_parser(action, help=text).add_argument("device_id")
    preauthorize = devices.add_parser(
        "preauthorize", help="let a device key enroll without a token"
    )
    preauthorize.add_argument("fingerprint", help="from `edgefleet-agent fingerprint`")
    preauthorize.add_argument("--label", type=key_value, action="append", default=[], metavar="K=V")

    operator = commands.add_parser("operator", help="operators").add_subparsers(
        dest="action", required=True
    )
    add = operator.add_parser("add", help="a credential for a new operator, with a role")
    add.add_argument("name")
    add.add_argument(
        "--role",
        required=True,
        help="admin, release-manager, device-manager, auditor, viewer or a custom role",
    )
    add.add_argument("--out", type=Path, required=True, help="directory for the new credential")

    policy = commands.add_parser("policy", help="the fleet's signed RBAC policy").add_subparsers(
        dest="action", required=True
    )
    policy.add_parser("apply", help="validate, version and sign a policy file").add_argument(
        "file", type=Path
    )
    policy.add_parser("show", help="the policy in force")
    policy.add_parser("diff", help="what applying a file would change").add_argument(
        "file", type=Path
    )

    apps = commands.add_parser(
        "tokens", help="application tokens in the signed policy"
    ).add_subparsers(dest="action", required=True)
    app_create = apps.add_parser("create", help="a token for an application (printed once)")
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
    apps.add_parser("revoke", help="revoke a token").add_argument("token_id")

    audit = commands.add_parser("audit", help="audit trail").add_subparsers(
        dest="action", required=True
    )
    export = audit.add_parser("export", help="records verbatim with a signed manifest")
    export.add_argument("--out", type=Path, required=True)
    export.add_argument("--device", help="only this device's chain (or `controller`)")
    export.add_argument("--since", default="", help="YYYY-MM-DDTHH:MM:SSZ, inclusive")
    export.add_argument("--until", default="", help="YYYY-MM-DDTHH:MM:SSZ, inclusive")
    export.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    verify = audit.add_parser("verify", help="verify an export offline, with the root fingerprint")
    verify.add_argument("file", type=Path)
    verify.add_argument("--root-fingerprint", required=True)
    return parser


def _client(args: argparse.Namespace) -> OperatorClient:
    path = args.config or (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None)
    if path is None:
        raise ConfigError(f"no operator config: pass --config or set {CONFIG_ENV}")
    return OperatorClient(OperatorCredential.load(path, args.controller))


def _cmd_init(args: argparse.Namespace) -> int:
    result = initialize(args.data_dir, args.fleet_name, args.host, args.advertise)
    print(f"initialized {args.data_dir}")
    print(f"root fingerprint: {result.root_fingerprint}")
    print(f"operator config:  {result.operator_config}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    configure_logging("json", args.log_level)
    config = load_controller_config(
        args.data_dir,
        listen=args.listen,
        enroll_listen=args.enroll_listen,
        database_url=args.database_url,
    )
    asyncio.run(serve(config))
    return 0


def _split_ref(ref: str) -> tuple[str, str]:
    name, sep, version = ref.partition("@")
    if not sep or not name or not version:
        raise ConfigError(f"{ref!r} is not NAME@VERSION")
    return name, version


def _operate(args: argparse.Namespace) -> int:
    client = _client(args)
    try:
        return _OPERATIONS[(args.command, args.action)](client, args)
    finally:
        client.close()


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


def _rollout_create(client: OperatorClient, args: argparse.Namespace) -> int:
    name, version = _split_ref(args.ref)
    rollout_id, device_ids = client.create_rollout(name, version, dict(args.selector))
    print(f"rollout {rollout_id}: {name}@{version} assigned to {len(device_ids)} device(s)")
    for device_id in device_ids:
        print(f"  {device_id}")
    return 0


def _devices_list(client: OperatorClient, args: argparse.Namespace) -> int:
    views = client.list_devices()
    if args.json:
        print(json.dumps([asdict(v) for v in views], indent=2))
        return 0
    print(f"{'DEVICE':<22} {'HOSTNAME':<20} {'LAST SEEN':<27} {'AUDIT':>6}  MODELS")
    for v in views:
        models = ", ".join(f"{m.name}@{m.version}{'*' if m.active else ''}" for m in v.models)
        print(
            f"{v.device_id:<22} {v.hostname[:20]:<20} {v.last_seen or 'never':<27} "
            f"{v.audit_stored_seq:>6}  {models or '-'}"
        )
        for b in v.bench:
            print(
                f"{'':<22} {b.model}@{b.version}: pp {b.prompt_tokens_per_second:.0f} tok/s, "
                f"tg {b.generation_tokens_per_second:.0f} tok/s ({b.threads} threads)"
            )
        if v.state != "active":
            print(f"{'':<22} state: {v.state}")
        if v.audit_alert:
            print(f"{'':<22} AUDIT TAMPER ALERT: {v.audit_alert}")
        if v.last_error:
            print(f"{'':<22} last error: {v.last_error}")
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


def _audit_verify(args: argparse.Namespace) -> int:
    try:
        data = args.file.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {args.file}: {e.strerror}") from e
    report = verify_export(data, args.root_fingerprint.strip().lower())
    for problem in report.problems:
        print(f"FAIL {problem}")
    chains = ", ".join(f"{chain}: {n}" for chain, n in sorted(report.chains.items()))
    verdict = "verified" if report.ok else f"{len(report.problems)} problem(s)"
    print(f"{report.records} record(s) in {len(report.chains)} chain(s) ({chains}): {verdict}")
    return 0 if report.ok else 1


def _devices_state(client: OperatorClient, args: argparse.Namespace) -> int:
    print(f"{args.device_id}: {client.set_device_state(args.device_id, args.action)}")
    return 0


def _devices_preauthorize(client: OperatorClient, args: argparse.Namespace) -> int:
    client.preauthorize(args.fingerprint.strip().lower(), dict(args.label))
    print(f"key {args.fingerprint[:16]}… may enroll without a token")
    return 0


def _operator_add(client: OperatorClient, args: argparse.Namespace) -> int:
    args.out.mkdir(parents=True, exist_ok=False, mode=0o700)
    key = new_tls_key()
    certificate, ca = client.add_operator(args.name, args.role, make_csr(key))
    write_operator_credential(args.out, key_pem(key), certificate, ca, client.address)
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


_OPERATIONS = {
    ("token", "create"): _token_create,
    ("models", "publish"): _models_publish,
    ("rollout", "create"): _rollout_create,
    ("devices", "list"): _devices_list,
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
}


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "init":
        return _cmd_init(args)
    if args.command == "serve":
        return _cmd_serve(args)
    if (args.command, getattr(args, "action", "")) == ("audit", "verify"):
        return _audit_verify(args)
    configure_logging("console", "WARNING")
    return _operate(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `edgefleetctl`."""
    return run_command(PROG, _parser(), argv, _dispatch)


if __name__ == "__main__":
    sys.exit(main())
