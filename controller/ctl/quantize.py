"""`edgefleetctl models quantize` and `edgefleetctl models report`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from edgefleet.cli_support import handled_by
from edgefleet.controller.catalog.quantization.variants import (
    DEFAULT_CONTEXT,
    DEFAULT_MAX_PERPLEXITY_INCREASE,
    DEFAULT_VARIANTS,
    parse_variants,
    variant_version,
)
from edgefleet.controller.ctl.connect import connect, with_client
from edgefleet.errors import (
    ConfigError,
    ConflictError,
    EdgefleetError,
    NotFoundError,
    PermissionDeniedError,
)
from edgefleet.output import add_output_option, age, print_documents
from edgefleet.speed import DEFAULT_REPETITIONS
from edgefleet.terminal import printable, raw_stderr

if TYPE_CHECKING:  # the pipeline (and matplotlib) load when a quantization runs
    from edgefleet.controller.catalog.quantization.pipeline import (
        QuantizationReport,
        VariantOutcome,
    )
    from edgefleet.controller.ctl.client import OperatorClient

MIB = 1024 * 1024


def add_quantize_parser(models: Any) -> None:
    """The `models quantize` and `models report` subcommands."""
    quantize = handled_by(
        models.add_parser(
            "quantize",
            help="quantize a GGUF model into variants, measure them, gate and publish the passing",
        ),
        lambda args: quantize_command(args, lambda: connect(args)),
    )
    quantize.add_argument("source", type=Path, help="the source GGUF (F32, BF16 or F16)")
    quantize.add_argument(
        "--allow-requantize",
        action="store_true",
        help="accept an already quantized source (its loss compounds into every variant)",
    )
    quantize.add_argument("--name", required=True)
    quantize.add_argument("--version", required=True, help="the release, e.g. 1.0.0")
    quantize.add_argument(
        "--variants",
        default=",".join(DEFAULT_VARIANTS),
        help=f"comma-separated llama.cpp types (default {','.join(DEFAULT_VARIANTS)})",
    )
    quantize.add_argument(
        "--max-ppl-increase",
        type=float,
        default=DEFAULT_MAX_PERPLEXITY_INCREASE,
        metavar="PERCENT",
        help="refuse a variant whose perplexity is more than this above the source's "
        f"(default {DEFAULT_MAX_PERPLEXITY_INCREASE:g})",
    )
    quantize.add_argument("--out", type=Path, help="output directory (default ./NAME-VERSION)")
    quantize.add_argument("--threads", type=int, help="llama.cpp threads (default: all cores)")
    quantize.add_argument("--context", type=int, default=DEFAULT_CONTEXT, help="perplexity window")
    quantize.add_argument("--text", type=Path, help="evaluation text (default: the bundled one)")
    quantize.add_argument(
        "--repetitions",
        type=int,
        default=DEFAULT_REPETITIONS,
        help="speed runs per file, median kept (default %(default)s)",
    )
    quantize.add_argument(
        "--no-publish", action="store_true", help="measure and report only; no controller needed"
    )
    report = handled_by(
        models.add_parser(
            "report", help="a model's variants and the speed devices measured, by device class"
        ),
        with_client(report_command),
    )
    report.add_argument("name")
    add_output_option(report)


class StepProgress:
    """The pipeline's progress: step N of M (each quantization, then measuring the source
    and each variant), the step's own count, and an ETA for the whole run from the time
    spent so far. Rewritten in place on a terminal; one line per finished step otherwise."""

    def __init__(self, steps: int, stream: TextIO | None = None) -> None:
        self.steps, self.step, self.stage = steps, 0, ""
        self.stream = stream or raw_stderr()  # its \r must stay \r
        self.tty = self.stream.isatty()
        self.started = self.step_started = time.monotonic()

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if stage != self.stage:
            self.stage, self.step_started = stage, now
            self.step = min(self.step + 1, self.steps)
        fraction = (self.step - 1 + (done / total if total else 1)) / self.steps
        elapsed = now - self.started
        eta = f", ETA {age(elapsed / fraction - elapsed)}" if 0 < fraction < 1 else ""
        where = f"[{self.step}/{self.steps}] {printable(stage)}"
        if self.tty:
            end = "\n" if done >= total else ""
            line = f"\r{where}: {done}/{total}{eta}"
            print(line.ljust(72), end=end, file=self.stream, flush=True)
        elif done >= total:
            took = now - self.step_started
            print(f"{where}: done ({total} steps, {took:.1f} s){eta}", file=self.stream, flush=True)


def evaluation_of(report: QuantizationReport, outcome: VariantOutcome) -> dict[str, Any]:
    """What the controller keeps with a published variant."""
    return {
        **asdict(outcome.measurement),
        "size_reduction_percent": outcome.size_reduction_percent,
        "perplexity_increase_percent": outcome.perplexity_increase_percent,
        "passed": outcome.passed,
        "source_perplexity": report.source.perplexity,
        "source_sha256": report.source.sha256,
        "max_perplexity_increase_percent": report.max_perplexity_increase_percent,
        "evaluated_tokens": report.evaluated_tokens,
        "evaluation_text_sha256": report.evaluation_text_sha256,
        "machine": report.machine,
        "created_at": report.created_at,
    }


def _refuse_published(client: OperatorClient, name: str, versions: list[str]) -> None:
    try:
        published = {v.version for v in client.model_report(name)[0]}
    except (NotFoundError, PermissionDeniedError):
        return  # nothing published yet, or no models.read: the publish itself will tell
    taken = sorted(published.intersection(versions))
    if taken:
        raise ConflictError(f"{name}@{taken[0]} is already published")


def quantize_command(args: argparse.Namespace, connect: Callable[[], OperatorClient]) -> int:
    """Run the pipeline; print the table; write JSON and chart; publish what passed."""
    from edgefleet.controller.catalog.quantization.pipeline import run_pipeline
    from edgefleet.controller.catalog.quantization.report import format_table, write_chart

    variants = parse_variants(args.variants)
    client = None if args.no_publish else connect()
    try:
        if client is not None:
            _refuse_published(
                client, args.name, [variant_version(args.version, v) for v in variants]
            )
        out_dir = args.out or Path(f"{args.name}-{args.version}")
        options: dict[str, Any] = {"text": args.text} if args.text else {}
        report = run_pipeline(
            args.source,
            out_dir,
            args.name,
            args.version,
            variants,
            max_perplexity_increase=args.max_ppl_increase,
            threads=args.threads,
            context=args.context,
            repetitions=args.repetitions,
            allow_requantize=args.allow_requantize,
            on_progress=StepProgress(2 * len(variants) + 1),
            **options,
        )
        print(format_table(report))
        print(f"report: {report.write(out_dir)}")
        try:
            print(f"chart:  {write_chart(report, out_dir)}")
        except ConfigError as e:
            print(f"chart skipped: {e}", file=sys.stderr)
        for refused in (v for v in report.variants if not v.passed):
            print(f"refused {refused.variant}: {refused.reason}", file=sys.stderr)
        if not report.passing:
            raise EdgefleetError(
                f"no variant passed the +{report.max_perplexity_increase_percent:g}% gate"
            )
        if client is None:
            return 0
        for outcome in report.passing:
            version = variant_version(args.version, outcome.variant)
            r = client.publish(
                out_dir / outcome.measurement.file,
                args.name,
                version,
                json.dumps(evaluation_of(report, outcome), sort_keys=True),
            )
            print(f"published {r.name}@{r.version} sha256={r.sha256} length={r.length}")
        print(
            f"roll out the best fitting variant per device: "
            f"edgefleetctl rollout create {args.name}@{args.version}"
        )
        return 0
    finally:
        if client is not None:
            client.close()


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def report_command(client: OperatorClient, args: argparse.Namespace) -> int:
    """Print a model's versions with their evaluation and the speeds devices measured."""
    versions_seen, speeds_seen = client.model_report(args.name)
    versions: list[dict[str, Any]] = [asdict(v) for v in versions_seen]
    speeds = [asdict(s) for s in speeds_seen]
    if args.output in ("json", "yaml"):
        print_documents({"name": args.name, "versions": versions, "speeds": speeds}, args.output)
        return 0
    print(f"{'version':<20} {'type':<7} {'size MiB':>9} {'PPL':>9} {'PPL +%':>7} {'top-1':>6}")
    for v in versions:
        e = v["evaluation"] or {}
        top1 = e.get("top1_agreement")
        print(
            f"{v['version']:<20} {v['quantization']:<7} {v['length'] / MIB:>9.1f} "
            f"{_fmt(e.get('perplexity'), '.3f'):>9} "
            f"{_fmt(e.get('perplexity_increase_percent'), '+.2f'):>7} "
            f"{_fmt(None if top1 is None else top1 * 100, '.1f'):>6}"
        )
    if not speeds:
        print("no device has run `edgefleet-agent bench` on these versions yet")
        return 0
    print()
    print(f"{'version':<20} {'device class':<24} {'devices':>7} {'pp t/s':>8} {'tg t/s':>8}")
    for s in speeds:
        print(
            f"{s['version']:<20} {s['device_class']:<24} {s['devices']:>7} "
            f"{s['prompt_tokens_per_second']:>8.1f} {s['generation_tokens_per_second']:>8.1f}"
        )
    return 0
