"""Durable audit appends: group commit vs one commit per record, in the same run.

Both sides are the agent's own AuditLog writer with the same SQLite settings (WAL,
synchronous=FULL: every commit is fsynced), the same record encoding and the same
producers — asyncio tasks awaiting each record's durability. The only difference is
the batch limit: up to 2,048 records per commit, or exactly one.
Then, at a steady request rate, what the inference path pays (the API queues the record
and does not wait for the disk) and how soon the record is durable after that.
Targets (issue 6): group commit >= 20,000 records/s; audit cost <= 1 ms at p99.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from edgefleet.agent.app.database import AgentDatabase
from edgefleet.agent.audit.log import AuditLog
from edgefleet.audit import AuditEvent, verify_chain

EVENT = AuditEvent(
    "app:bench",
    "inference.chat",
    "smollm2@1.0",
    "success",
    {
        "sha256": "ab" * 32,
        "prompt_tokens": 42,
        "completion_tokens": 7,
        "stream": True,
        "latency_ms": 430,
        "ttft_ms": 20,
        "endpoint": "chat",
    },
)


async def produce(
    log: AuditLog, producers: int, total: int, pause: float = 0.0
) -> tuple[float, list[float]]:
    """Records/s and per-record wait with ``producers`` concurrent tasks.

    ``pause`` seconds between a producer's records model a request rate instead of a flood.
    """
    latencies: list[float] = []

    async def producer(count: int) -> None:
        for _ in range(count):
            started = time.perf_counter()
            await log.record(EVENT)
            latencies.append(time.perf_counter() - started)
            if pause:
                await asyncio.sleep(pause)

    started = time.perf_counter()
    await asyncio.gather(*(producer(total // producers) for _ in range(producers)))
    return len(latencies) / (time.perf_counter() - started), latencies


async def paced(log: AuditLog) -> tuple[list[float], list[float]]:
    """What a request pays (queueing its record) and when the record is durable."""
    queued: list[float] = []
    durable: list[float] = []

    async def client() -> None:
        for _ in range(250):
            started = time.perf_counter()
            future = log.submit(EVENT)  # what the API does: queue, do not wait
            queued.append(time.perf_counter() - started)
            await asyncio.wrap_future(future)
            durable.append(time.perf_counter() - started)
            await asyncio.sleep(0.02)

    await asyncio.gather(*(client() for _ in range(16)))
    return queued, durable


def measure(
    path: Path, max_batch: int, producers: int, total: int, pause: float = 0.0
) -> tuple[float, list[float]]:
    log = AuditLog(AgentDatabase(path), "dev-bench", max_batch=max_batch)
    rate, latencies = asyncio.run(produce(log, producers, total, pause))
    assert verify_chain("dev-bench", log.all_records()) == len(latencies)
    return rate, latencies


def percentile_ms(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] * 1000


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--producers", type=int, default=64, help="concurrent requests")
    parser.add_argument("--records", type=int, default=40_000, help="group-commit side")
    parser.add_argument("--baseline-records", type=int, default=4_000, help="per-record side")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="audit-bench-") as tmp:
        group = measure(Path(tmp) / "group.db", 2048, args.producers, args.records)
        single = measure(Path(tmp) / "single.db", 1, args.producers, args.baseline_records)
    print(f"{args.producers} concurrent producers; SQLite WAL, synchronous=FULL (fsync per commit)")
    print(f"{'strategy':<26}{'records':>9}{'records/s':>12}{'p50 ms':>9}{'p99 ms':>9}")
    for name, (rate, lat) in (("group commit", group), ("one commit per record", single)):
        p50, p99 = percentile_ms(lat, 50), percentile_ms(lat, 99)
        print(f"{name:<26}{len(lat):>9}{rate:>12.0f}{p50:>9.2f}{p99:>9.2f}")
    ratio = group[0] / single[0]
    print(
        f"group / per-record = {group[0]:.0f} / {single[0]:.0f} = {ratio:.1f}x (target >= 20,000/s)"
    )
    with tempfile.TemporaryDirectory(prefix="audit-bench-") as tmp:
        queued, durable = asyncio.run(paced(AuditLog(AgentDatabase(Path(tmp) / "p.db"), "dev")))
    print(
        f"inference path at ~800 requests/s (16 clients, one request each every 20 ms): "
        f"queueing the record p50 {percentile_ms(queued, 50):.3f} ms, "
        f"p99 {percentile_ms(queued, 99):.3f} ms (target p99 <= 1 ms); "
        f"durable after p50 {percentile_ms(durable, 50):.2f} ms, "
        f"p99 {percentile_ms(durable, 99):.2f} ms"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
