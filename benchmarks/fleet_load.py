"""Fleet load: device syncs against a real controller on PostgreSQL, and the same calls
against an empty grpc.aio echo service, in one run.

Set-up: a controller data directory, PostgreSQL with --devices enrolled devices (default
10,000). The controller runs as `edgefleetctl serve` (its own process). Two fleet states
are measured, one after the other:

- **at rest**: the bundled model published as smollm2@1.0, and every device assigned it by
  a completed rollout (written directly to the database, as 10,000 devices reporting
  healthy would leave it): a sync stores the report and answers the desired state;
- **rollout under way**: then smollm2@1.1 (same file) rolled out to every device in one
  wave with `rollout create`: every report is also judged against the rollout's gates.

The controller's /metrics tell how many syncs it answered from a kept answer (no query)
and how many in full (one transaction). The echo service is a grpc.aio server in another
process with the same mTLS set-up (server certificate, client certificates required) whose
one method returns its request. The load comes from a third process: real gRPC clients
over mTLS, one channel per simulated device (--identities of them, each with its own
device certificate), sending the StatusReport an agent sends (an installed model, its
health, resources) and reading the DesiredState (root chain, timestamp, targets, policy,
assignments).

Two runs per fleet state and for the echo service: as fast as --concurrency callers go
(sustained calls/s, p50/p99),
and at the rate of --agents agents syncing every --interval seconds (p50/p99 at that load).
Targets (issue 8): our sync >= 0.5x the echo baseline's calls/s; p99 < 100 ms at the load
of 10,000 agents syncing every 60 s. With fewer identities than agents each identity syncs
more often: the rate is the same, the TLS sessions are fewer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select

from edgefleet import serde
from edgefleet.bundled import bundled_model_path
from edgefleet.controller.app.datadir import DataDir, initialize
from edgefleet.controller.store.database import Database, reset_scratch_database
from edgefleet.controller.store.schema import Assignment, Device, Rollout, RolloutTarget
from edgefleet.fleet import DeviceResources, InstalledModel, ModelHealth, StatusReport
from edgefleet.tls import cert_pem, key_fingerprint, key_pem, new_tls_key
from tests.harness import BIN, free_port, wait_for

URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
SYNC = "/edgefleet.v1.DeviceService/Sync"
ECHO = "/bench.Echo/Echo"
MIB = 1024 * 1024


def _report() -> bytes:
    """What an agent serving one model sends at each sync."""
    report = StatusReport(
        agent_version="0.1.0",
        models=(InstalledModel("smollm2", "1.0", "a" * 64, True),),
        audit_head_seq=1234,
        resources=DeviceResources("aarch64", 4, 4096 * MIB, 2048 * MIB, 2048, 1, 8192 * MIB, 0),
        health=(ModelHealth("smollm2", "1.0", "passed", "", 42.0, 1000, 2),),
    )
    return bytes(serde.status_to_pb(report).SerializeToString())


def _populate(root: Path, db: Database, devices: int, identities: int) -> Path:
    """Devices in the database; key and certificate files for the first ``identities``."""
    data = DataDir(root / "controller")
    ca = data.load_ca()
    key = new_tls_key()  # one key pair for every simulated device: certificates differ
    ids = root / "ids"
    ids.mkdir()
    (ids / "key.pem").write_bytes(key_pem(key))
    (ids / "ca.pem").write_bytes(cert_pem(ca.cert))
    now = datetime.now(UTC)
    rows = []
    for index in range(devices):
        device_id = f"dev-{index:016x}"
        serial = "0"
        if index < identities:
            cert = ca.issue_client(key.public_key(), f"device:{device_id}", timedelta(days=1))
            (ids / f"{device_id}.pem").write_bytes(cert_pem(cert))
            serial = format(cert.serial_number, "x")
        rows.append(
            {
                "device_id": device_id,
                "hostname": device_id,
                "labels": {"site": f"site-{index % 100}"},
                "state": "active",
                "key_fingerprint": key_fingerprint(key),
                "certificate_serial": serial,
                "previous_serial": "",
                "audit_public_key": "a" * 64,
                "enrolled_at": now,
                "installed": [],
                "bench": [],
                "downloads": [],
                "resources": {},
                "health": [],
            }
        )
    with db.engine.begin() as connection:
        for start in range(0, len(rows), 2000):
            connection.execute(insert(Device), rows[start : start + 2000])
    return ids


def _complete_rollout(url: str, name: str, version: str) -> None:
    """Every device assigned ``name@version`` by a rollout that completed (as when the
    fleet has run it for a while), written directly: faster than 10,000 devices reporting."""
    now = datetime.now(UTC)
    db = Database(url)
    try:
        with db.session() as session:
            rollout = Rollout(
                name=name, version=version, selector={}, created_by="bench", created_at=now,
                state="completed",
            )  # fmt: skip
            session.add(rollout)
            session.flush()
            devices = list(session.execute(select(Device.device_id)).scalars())
            session.execute(
                insert(RolloutTarget),
                [
                    {"rollout_id": rollout.id, "device_id": d, "wave": 0, "version": version,
                     "previous_version": "", "state": "healthy", "reason": "bench"}
                    for d in devices
                ],
            )  # fmt: skip
            session.execute(
                insert(Assignment),
                [
                    {"device_id": d, "model_name": name, "version": version,
                     "rollout_id": rollout.id}
                    for d in devices
                ],
            )  # fmt: skip
    finally:
        db.dispose()


def _spawn(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        command, stdout=log.open("ab"), stderr=subprocess.STDOUT, env={**os.environ, **env}
    )


# --- the echo service ------------------------------------------------------------------
async def _echo_server(tls: Path, port: int) -> None:
    import grpc

    def echo(request: bytes, context: Any) -> bytes:
        return request

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(
                echo, request_deserializer=None, response_serializer=None
            )
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    credentials = grpc.ssl_server_credentials(
        [((tls / "server.key").read_bytes(), (tls / "server.pem").read_bytes())],
        root_certificates=(tls / "ca.pem").read_bytes(),
        require_client_auth=True,
    )
    server.add_secure_port(f"127.0.0.1:{port}", credentials)
    await server.start()
    await server.wait_for_termination()


# --- the load generator ----------------------------------------------------------------
async def _generate(
    target: str, method: str, ids: Path, identities: int, rate: float, seconds: float, workers: int
) -> dict[str, float]:
    """Calls for ``seconds``: ``rate`` per second spread over the identities (open loop),
    or as fast as ``workers`` callers go (rate 0). Latency includes any wait for a free
    channel slot."""
    import grpc

    key, ca = (ids / "key.pem").read_bytes(), (ids / "ca.pem").read_bytes()
    certs = sorted(ids.glob("dev-*.pem"))[:identities]
    channels = [
        grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(ca, key, c.read_bytes()))
        for c in certs
    ]
    calls = [ch.unary_unary(method) for ch in channels]
    body = _report()
    latencies: list[float] = []
    errors = 0

    async def one(index: int) -> None:
        nonlocal errors
        started = time.perf_counter()
        try:
            await calls[index % len(calls)](body, timeout=30)
        except grpc.aio.AioRpcError:
            errors += 1
            return
        latencies.append(time.perf_counter() - started)

    # Warm up: every channel connects (TLS handshake) before anything is measured.
    await asyncio.gather(*(one(i) for i in range(len(calls))))
    latencies.clear()
    errors = 0
    started = time.perf_counter()
    deadline = started + seconds
    if rate:
        pending: set[asyncio.Task[None]] = set()
        sent = 0
        while (now := time.perf_counter()) < deadline:
            due = int((now - started) * rate)
            while sent < due:
                task = asyncio.create_task(one(sent))
                pending.add(task)
                task.add_done_callback(pending.discard)
                sent += 1
            await asyncio.sleep(0.002)
        await asyncio.gather(*pending)
    else:
        counter = iter(range(10**9))

        async def worker() -> None:
            while time.perf_counter() < deadline:
                await one(next(counter))

        await asyncio.gather(*(worker() for _ in range(workers)))
    elapsed = time.perf_counter() - started
    for channel in channels:
        await channel.close()
    ordered = sorted(latencies)
    return {
        "calls": len(ordered),
        "errors": errors,
        "per_second": len(ordered) / elapsed,
        "p50_ms": 1000 * statistics.median(ordered) if ordered else 0.0,
        "p99_ms": 1000 * ordered[int(0.99 * (len(ordered) - 1))] if ordered else 0.0,
    }


def _answers(metrics: str) -> dict[str, float]:
    """How many syncs the controller answered from a kept answer and how many in full."""
    with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=30) as reply:
        text = reply.read().decode()
    counts = {"kept": 0.0, "full": 0.0}
    for line in text.splitlines():
        for answer in counts:
            if line.startswith(f'edgefleet_syncs_total{{answer="{answer}"}}'):
                counts[answer] = float(line.split()[-1])
    return counts


def _load(
    target: str, method: str, ids: Path, args: argparse.Namespace, rate: float
) -> dict[str, float]:
    command = [
        sys.executable, "-m", "benchmarks.fleet_load", "generate", "--target", target,
        "--method", method, "--ids", str(ids), "--identities", str(args.identities),
        "--rate", str(rate), "--seconds", str(args.seconds), "--concurrency",
        str(args.concurrency),
    ]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=600)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _row(name: str, at_max: dict[str, float], at_rate: dict[str, float]) -> str:
    return (
        f"{name:<26} {at_max['per_second']:>9.0f} {at_max['p50_ms']:>8.1f} "
        f"{at_max['p99_ms']:>8.1f} | {at_rate['per_second']:>7.1f} {at_rate['p50_ms']:>8.1f} "
        f"{at_rate['p99_ms']:>8.1f}  errors {at_max['errors'] + at_rate['errors']:.0f}"
    )


def run(args: argparse.Namespace) -> None:
    rate = args.agents / args.interval
    with tempfile.TemporaryDirectory(prefix="edgefleet-fleet-load-") as tmp:
        root = Path(tmp)
        result = initialize(root / "controller", "bench", [], "127.0.0.1:0")
        db = Database(args.database_url)
        reset_scratch_database(db)
        began = time.perf_counter()
        ids = _populate(root, db, args.devices, args.identities)
        db.dispose()
        print(
            f"{args.devices} devices in the database, {args.identities} with certificates "
            f"({time.perf_counter() - began:.1f} s)"
        )
        (root / "controller" / "tls" / "ca.pem").write_bytes((ids / "ca.pem").read_bytes())
        sync = f"127.0.0.1:{free_port()}"
        env = {
            "EDGEFLEET_CONTROLLER_DATABASE_URL": args.database_url,
            "EDGEFLEETCTL_CONFIG": str(result.operator_config),
        }
        controller = _spawn(
            [
                str(BIN / "edgefleetctl"),
                "serve",
                "--data-dir",
                str(root / "controller"),
                "--listen",
                sync,
                "--enroll-listen",
                f"127.0.0.1:{free_port()}",
                "--health-listen",
                "",
                "--metrics-listen",
                "127.0.0.1:0",
                "--log-level",
                "WARNING",
            ],  # fmt: skip
            env,
            root / "controller.log",
        )
        echo_port = free_port()
        echo = _spawn(
            [
                sys.executable,
                "-m",
                "benchmarks.fleet_load",
                "echo-server",
                "--tls",
                str(root / "controller" / "tls"),
                "--port",
                str(echo_port),
            ],  # fmt: skip
            {},
            root / "echo.log",
        )
        try:
            wait_for(
                "the controller",
                lambda: True if (root / "controller" / "serve.addr").exists() else None,
                60,
            )
            ctl = [str(BIN / "edgefleetctl"), "--controller", sync]

            def operator(*command: str) -> None:
                subprocess.run(
                    [*ctl, *command], env={**os.environ, **env}, check=True,
                    capture_output=True, timeout=600,
                )  # fmt: skip

            model = str(bundled_model_path())
            operator("models", "publish", model, "--name", "smollm2", "--version", "1.0")
            _complete_rollout(args.database_url, "smollm2", "1.0")
            print("every device runs smollm2@1.0 (a completed rollout)")
            metrics = (root / "controller" / "serve.addr").read_text().split()[3]
            results = {
                "Sync, fleet at rest": (
                    _load(sync, SYNC, ids, args, 0.0),
                    _load(sync, SYNC, ids, args, rate),
                )
            }
            answers = {"Sync, fleet at rest": _answers(metrics)}
            operator("models", "publish", model, "--name", "smollm2", "--version", "1.1")
            began = time.perf_counter()
            operator("rollout", "create", "smollm2@1.1")
            print(
                f"rollout of smollm2@1.1 to {args.devices} devices created in "
                f"{time.perf_counter() - began:.1f} s"
            )
            results["Sync, rollout under way"] = (
                _load(sync, SYNC, ids, args, 0.0),
                _load(sync, SYNC, ids, args, rate),
            )
            at_rest = answers["Sync, fleet at rest"]
            answers["Sync, rollout under way"] = {
                k: v - at_rest[k] for k, v in _answers(metrics).items()
            }
            echo_target = f"127.0.0.1:{echo_port}"
            results["Echo (empty grpc.aio)"] = (
                _load(echo_target, ECHO, ids, args, 0.0),
                _load(echo_target, ECHO, ids, args, rate),
            )
        finally:
            for process in (controller, echo):
                process.terminate()
                process.wait(30)
    print(
        f"\n{args.identities} device identities over mTLS, {args.concurrency} callers at most; "
        f"target load {args.agents} agents / {args.interval} s = {rate:.1f} syncs/s; "
        f"{args.seconds:.0f} s per run"
    )
    head = f"{'max /s':>9} {'p50 ms':>8} {'p99 ms':>8} | {'at /s':>7} {'p50 ms':>8} {'p99 ms':>8}"
    print(f"{'':<26} {head}")
    for name, (at_max, at_rate) in results.items():
        print(_row(name, at_max, at_rate))
    echo_max = results["Echo (empty grpc.aio)"][0]["per_second"]
    for name in ("Sync, fleet at rest", "Sync, rollout under way"):
        at_max, at_rate = results[name]
        print(
            f"{name}: ours / echo at full speed {at_max['per_second']:.0f} / {echo_max:.0f} = "
            f"{at_max['per_second'] / echo_max:.2f}x (target >= 0.5x); p99 at {rate:.0f} "
            f"syncs/s {at_rate['p99_ms']:.1f} ms (target < 100 ms); answers kept / full "
            f"{answers[name]['kept']:.0f} / {answers[name]['full']:.0f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command")
    echo = commands.add_parser("echo-server")
    echo.add_argument("--tls", type=Path, required=True)
    echo.add_argument("--port", type=int, required=True)
    generate = commands.add_parser("generate")
    generate.add_argument("--target", required=True)
    generate.add_argument("--method", required=True)
    generate.add_argument("--ids", type=Path, required=True)
    for p in (parser, generate):
        p.add_argument("--identities", type=int, default=1000)
        p.add_argument("--seconds", type=float, default=20.0)
        p.add_argument("--concurrency", type=int, default=64)
    generate.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--interval", type=float, default=60.0)
    parser.add_argument("--database-url", default=URL)
    args = parser.parse_args()
    if args.command == "echo-server":
        asyncio.run(_echo_server(args.tls, args.port))
    elif args.command == "generate":
        stats = asyncio.run(
            _generate(
                args.target, args.method, args.ids, args.identities, args.rate, args.seconds,
                args.concurrency,
            )
        )  # fmt: skip
        print(json.dumps(stats))
    else:
        run(args)


if __name__ == "__main__":
    main()
