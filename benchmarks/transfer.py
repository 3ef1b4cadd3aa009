"""The same 256 MB blob to the agent over our gRPC mTLS path and over HTTPS from nginx.

Both sides are the agent's own download path (:class:`edgefleet.agent.sync.fetch.Fetcher`: chunk
index, every chunk checked as it fills, GGUF header check, fsync and rename into a blob
store), in this process, from a real controller process and from a real nginx (Debian's
package) on loopback serving the controller's blob folder. Rounds are interleaved after
one untimed warm-up download from each; the median of each side is reported, with this
process's CPU seconds per GB (the agent's cost) and the server's (the controller
process, or nginx's master and worker). Target (issue 7): ours >= 0.8x nginx's
throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from edgefleet import __version__
from edgefleet.agent.app.config import load_agent_config
from edgefleet.agent.app.service import sync_client
from edgefleet.agent.app.state import LocalState
from edgefleet.agent.registry.blobs import BlobStore
from edgefleet.agent.sync.fetch import BlobSource, Fetcher
from edgefleet.agent.sync.mirrors import HttpSource, client_session
from edgefleet.fleet import StatusReport
from edgefleet.trust.metadata import ModelManifest, Targets
from tests.ggufkit import write_tiny_gguf
from tests.harness import Fleet
from tests.nginxkit import NGINX, NginxMirror

MIB = 1024 * 1024


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _process_cpu(pid: int) -> float:
    """CPU seconds of process ``pid`` and its live children (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total, pids = 0.0, [pid]
    while pids:
        current = pids.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        pids.extend(int(child) for child in children)
    return total


async def _fetch(
    source: BlobSource, manifest: ModelManifest, store: Path, server: int
) -> tuple[float, float, float]:
    """(seconds, agent CPU seconds, server CPU seconds) of one download."""
    shutil.rmtree(store, ignore_errors=True)
    fetcher = Fetcher(BlobStore(store), stall_seconds=60)
    cpu, server_cpu, started = _cpu(), _process_cpu(server), time.perf_counter()
    await fetcher.download(source, manifest)
    elapsed = time.perf_counter() - started
    return elapsed, _cpu() - cpu, _process_cpu(server) - server_cpu


async def _drain(
    source: BlobSource, manifest: ModelManifest, server: int
) -> tuple[float, float, float]:
    """Transport only: read the blob and throw it away."""
    cpu, server_cpu, started = _cpu(), _process_cpu(server), time.perf_counter()
    async for _ in source.read_blob(manifest.sha256, 0):
        pass
    elapsed = time.perf_counter() - started
    return elapsed, _cpu() - cpu, _process_cpu(server) - server_cpu


async def _run(fleet: Fleet, mirror: NginxMirror, rounds: int, scratch: Path) -> None:
    data_dir = fleet.agent_dir("bench")
    config = load_agent_config(data_dir)
    state = LocalState.open(data_dir)
    client = sync_client(config, state)
    http = client_session(str(mirror.ca_file))
    try:
        desired = await client.sync(StatusReport(agent_version=__version__))
        manifest = Targets.from_payload(desired.targets.payload).models["big@1"]
        sources: dict[str, tuple[BlobSource, int]] = {
            "grpc mTLS (controller)": (client, fleet.processes["controller"].pid),
            "https (nginx)": (HttpSource(mirror.url, http, 60), mirror.pid),
        }
        walls: dict[str, list[float]] = {}
        cpus: dict[str, list[float]] = {}
        server_cpus: dict[str, list[float]] = {}
        for source, server in sources.values():
            # Untimed: the first download into memory the VM has not touched yet pays the
            # host's page faults as system time (measured: 2.8 s/GB instead of 0.7).
            await _fetch(source, manifest, scratch / "store", server)
        for _ in range(rounds):
            for name, (source, server) in sources.items():
                for label, measure in (
                    (name, _fetch(source, manifest, scratch / "store", server)),
                    (f"{name}, transport only", _drain(source, manifest, server)),
                ):
                    wall, cpu, server_cpu = await measure
                    walls.setdefault(label, []).append(wall)
                    cpus.setdefault(label, []).append(cpu)
                    server_cpus.setdefault(label, []).append(server_cpu)
    finally:
        await http.close()
        await client.close()
        state.db.dispose()
    size_mib = manifest.length / MIB
    print(f"blob: {manifest.length} bytes, {rounds} rounds, medians")
    rates = {}
    for name in walls:
        rates[name] = size_mib / statistics.median(walls[name])
        per_gb = statistics.median(cpus[name]) / (manifest.length / 1e9)
        server_per_gb = statistics.median(server_cpus[name]) / (manifest.length / 1e9)
        print(
            f"  {name:<40} {rates[name]:8.1f} MiB/s   agent CPU {per_gb:.2f} s/GB"
            f"   server CPU {server_per_gb:.2f} s/GB"
        )
    ours, theirs = rates["grpc mTLS (controller)"], rates["https (nginx)"]
    print(f"  ours / nginx = {ours:.1f} / {theirs:.1f} = {ours / theirs:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if NGINX is None:
        raise SystemExit("nginx is not installed: run `make system-deps` (Debian) first")
    with tempfile.TemporaryDirectory(prefix="edgefleet-transfer-") as tmp:
        root = Path(tmp)
        fleet = Fleet(root / "fleet")
        fleet.root.mkdir()
        try:
            fleet.init_controller()
            fleet.start_controller()
            rows = args.size_mb * 1_000_000 // 16
            model = write_tiny_gguf(root / "big.gguf", seed=1, rows=rows)
            fleet.ctl("models", "publish", str(model), "--name", "big", "--version", "1")
            fleet.enroll("bench", {"site": "bench"})
            blobs = fleet.controller_dir / "blobs" / "sha256"
            with NginxMirror(root / "nginx", blobs) as mirror:
                asyncio.run(_run(fleet, mirror, args.rounds, root))
        finally:
            fleet.stop_all()


if __name__ == "__main__":
    main()
