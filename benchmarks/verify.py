"""Hashing throughput of our blob verification vs `sha256sum`, on the same file, same run.

"Ours" is what `edgefleet-agent models verify --mode full` and the scheduled scrub run:
every chunk of a stored blob hashed and compared with its signed chunk index
(:meth:`edgefleet.trust.chunks.ChunkIndex.bad_chunks`). The baseline is coreutils'
`sha256sum` reading the same file. Both read from the page cache (the file is read once
before timing), rounds are interleaved, and the median of each side is reported, with
the CPU seconds our side spent per GB. `openssl dgst -sha256` is shown for reference.
Target (issue 3): ours >= 0.9x sha256sum.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from edgefleet.trust.chunks import DEFAULT_CHUNK_SIZE, ChunkIndex

MIB = 1024 * 1024


def _write_random(path: Path, size_mib: int) -> None:
    with path.open("wb") as f:
        for _ in range(0, size_mib, 64):
            f.write(os.urandom(64 * MIB))


def _time_command(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - started


def _time_ours(index: ChunkIndex, path: Path) -> tuple[float, float]:
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    bad = index.bad_chunks(path)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    if bad:
        raise SystemExit(f"verification found damaged chunks {bad[:5]} in an intact file")
    return wall, (after.ru_utime - cpu.ru_utime) + (after.ru_stime - cpu.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgefleet-verify-") as tmp:
        path = Path(tmp) / "blob"
        _write_random(path, args.size_mib)
        index = ChunkIndex.of_file(path, DEFAULT_CHUNK_SIZE)  # also warms the page cache
        openssl = shutil.which("openssl")
        ours, cpu, baseline, reference = [], [], [], []
        for _ in range(args.rounds):
            baseline.append(_time_command(["sha256sum", str(path)]))
            wall, seconds = _time_ours(index, path)
            ours.append(wall)
            cpu.append(seconds)
            if openssl:
                reference.append(_time_command([openssl, "dgst", "-sha256", str(path)]))
        size = args.size_mib
        ours_rate = size / statistics.median(ours)
        base_rate = size / statistics.median(baseline)
        print(f"file: {size} MiB, chunk {DEFAULT_CHUNK_SIZE // MIB} MiB, {args.rounds} rounds")
        print(f"  sha256sum                     {base_rate:8.0f} MiB/s")
        if reference:
            print(
                f"  openssl dgst (reference)      {size / statistics.median(reference):8.0f} MiB/s"
            )
        print(f"  ours (chunk-index full check) {ours_rate:8.0f} MiB/s")
        print(
            f"  ours / sha256sum = {ours_rate:.0f} / {base_rate:.0f} = {ours_rate / base_rate:.2f}"
        )
        print(f"  ours CPU: {statistics.median(cpu) / (size / 1024):.2f} s per GiB")


if __name__ == "__main__":
    main()
