"""Coverage-guided fuzzing of the parsers in tests/fuzz/targets.py with atheris (libFuzzer).

    python -m tests.fuzz.run_atheris [--seconds 60] [TARGET ...]

Each target runs in its own process for ``--seconds``, starting from the valid seeds of
tests/fuzz/seeds.py and the corpus it grew before (.fuzz/corpus/TARGET). An input that
makes a target raise anything but its documented refusal is kept in .fuzz/crashes/ and
the command exits 1: turn it into a test (tests/fuzz/test_findings.py), then fix it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / ".fuzz"


def _child(name: str, seconds: int) -> None:
    """Inside the child: instrument our packages, then hand the target to libFuzzer."""
    import atheris

    with atheris.instrument_imports(include=["edgefleet", "agent", "controller"]):
        from tests.fuzz import seeds
        from tests.fuzz.targets import TARGETS
    corpus = WORK / "corpus" / name
    corpus.mkdir(parents=True, exist_ok=True)
    for number, seed in enumerate(seeds.build()[name]):
        (corpus / f"seed-{number}").write_bytes(seed)
    crashes = WORK / "crashes"
    crashes.mkdir(parents=True, exist_ok=True)
    arguments = [
        sys.argv[0],
        f"-max_total_time={seconds}",
        "-timeout=10",  # one input taking longer is a finding (a parser must stay bounded)
        "-rss_limit_mb=2048",
        f"-artifact_prefix={crashes}/{name}-",
        str(corpus),
    ]
    atheris.Setup(arguments, TARGETS[name])
    atheris.Fuzz()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", help="default: every target")
    parser.add_argument("--seconds", type=int, default=60, help="per target (default 60)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.seconds)
        return 0
    from tests.fuzz.targets import TARGETS

    names = args.targets or sorted(TARGETS)
    failed = []
    for name in names:
        if name not in TARGETS:
            parser.error(f"unknown target {name!r}; targets: {', '.join(sorted(TARGETS))}")
        print(f"fuzzing {name} for {args.seconds} s", flush=True)
        command = [
            sys.executable,
            "-m",
            "tests.fuzz.run_atheris",
            "--child",
            name,
            "--seconds",
            str(args.seconds),
        ]
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        summary = [line for line in result.stderr.splitlines() if line.startswith(("#", "Done"))]
        print("  " + (summary[-1] if summary else "(no libFuzzer summary)"))
        if result.returncode != 0:
            failed.append(name)
            print(result.stderr[-3000:], file=sys.stderr)
    if failed:
        print(f"findings in: {', '.join(failed)} (inputs in {WORK / 'crashes'})", file=sys.stderr)
        return 1
    print(f"no findings in {len(names)} target(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
