"""`edgefleet-agent bench MODEL`: prompt and generation tokens/s of an installed model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edgefleet.agent.cli import HELP
from edgefleet.cli_support import Subcommands, handled_by, positive_int
from edgefleet.errors import ConfigError
from edgefleet.speed import DEFAULT_GENERATED_TOKENS, DEFAULT_PROMPT_TOKENS, DEFAULT_REPETITIONS


def register(commands: Subcommands) -> None:
    """`bench MODEL`."""
    bench = handled_by(
        commands.add_parser("bench", help=HELP["bench"]),
        _cmd_bench,
    )
    bench.add_argument("model")
    bench.add_argument("--threads", type=positive_int, help="default: the agent's n_threads")
    bench.add_argument("--prompt-tokens", type=positive_int, default=DEFAULT_PROMPT_TOKENS)
    bench.add_argument("--gen-tokens", type=positive_int, default=DEFAULT_GENERATED_TOKENS)
    bench.add_argument("--repetitions", type=positive_int, default=DEFAULT_REPETITIONS)


def _cmd_bench(args: argparse.Namespace) -> int:
    from edgefleet.agent.app.config import load_agent_config
    from edgefleet.agent.app.state import LocalState
    from edgefleet.agent.inference.bench import run_bench, save_result

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
