"""Quantize a source GGUF into variants, measure every file, and gate on perplexity."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgefleet.controller.catalog.quantization.variants import (
    DEFAULT_CONTEXT,
    DEFAULT_MAX_PERPLEXITY_INCREASE,
    VARIANTS,
    variant_version,
)
from edgefleet.errors import MalformedInputError, StorageError
from edgefleet.files import sha256_of_file
from edgefleet.gguf import read_gguf_file
from edgefleet.speed import DEFAULT_REPETITIONS
from edgefleet.trust.metadata import check_model_name, check_model_version, format_time

EVALUATION_TEXT = Path(__file__).with_name("evaluation.txt")
REPORT_FILE = "report.json"

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Measurement:
    """One model file as measured on the machine that ran the pipeline."""

    variant: str
    quantization: str
    file: str
    sha256: str
    size_bytes: int
    loaded_memory_bytes: int
    prompt_tokens_per_second: float
    generation_tokens_per_second: float
    perplexity: float
    top1_agreement: float | None
    kl_divergence: float | None


@dataclass(frozen=True)
class VariantOutcome:
    """A variant against its source, and the gate's verdict."""

    measurement: Measurement
    size_reduction_percent: float
    perplexity_increase_percent: float
    passed: bool
    reason: str

    @property
    def variant(self) -> str:
        return self.measurement.variant


@dataclass(frozen=True)
class QuantizationReport:
    """Everything the pipeline measured, with enough context to repeat it."""

    name: str
    version: str
    created_at: str
    machine: str
    threads: int
    context: int
    evaluation_text_sha256: str
    text_tokens: int
    evaluated_tokens: int
    max_perplexity_increase_percent: float
    source: Measurement
    variants: tuple[VariantOutcome, ...]

    @property
    def passing(self) -> tuple[VariantOutcome, ...]:
        return tuple(v for v in self.variants if v.passed)

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["variants"] = [asdict(v) for v in self.variants]
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> QuantizationReport:
        try:
            variants = tuple(
                VariantOutcome(**{**v, "measurement": Measurement(**v["measurement"])})
                for v in doc["variants"]
            )
            return cls(**{**doc, "source": Measurement(**doc["source"]), "variants": variants})
        except (KeyError, TypeError) as e:
            raise MalformedInputError(f"not a quantization report: {e}") from e

    def write(self, out_dir: Path) -> Path:
        path = out_dir / REPORT_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


# What a source may be without --allow-requantize: "F16 or better".
FULL_PRECISION = ("F32", "BF16", "F16")


def gate(
    source: Measurement, measurement: Measurement, max_increase_percent: float
) -> VariantOutcome:
    """Pass a variant smaller than its source whose perplexity is at most
    ``max_increase_percent`` above the source's."""
    increase = (measurement.perplexity - source.perplexity) / source.perplexity * 100
    reduction = (1 - measurement.size_bytes / source.size_bytes) * 100
    within = increase <= max_increase_percent
    smaller = measurement.size_bytes < source.size_bytes
    passed = within and smaller
    reason = (
        f"perplexity {measurement.perplexity:.3f} is {increase:+.2f}% against the source's "
        f"{source.perplexity:.3f}, "
        + ("within" if within else "beyond")
        + f" the gate of +{max_increase_percent:g}%"
    )
    if not smaller:  # a variant must save something: this one only costs quality
        reason = (
            f"{measurement.size_bytes / source.size_bytes:.2f}x the source's size: a variant "
            f"must be smaller than its source; " + reason
        )
    return VariantOutcome(measurement, round(reduction, 2), round(increase, 3), passed, reason)


def run_worker(arguments: Sequence[str], stage: str, on_progress: Progress) -> dict[str, Any]:
    """Run one worker child; pass its progress on; return its result or raise its error."""
    with tempfile.TemporaryFile("w+", errors="replace") as stderr:
        child = subprocess.Popen(
            [sys.executable, "-m", "edgefleet.controller.catalog.quantization.worker", *arguments],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            errors="replace",
        )
        result: dict[str, Any] | None = None
        error: str | None = None
        try:
            assert child.stdout is not None
            for line in child.stdout:
                try:
                    message = json.loads(line)
                except ValueError:
                    continue  # llama.cpp writing to stdout
                if not isinstance(message, dict):
                    continue
                if "progress" in message:
                    on_progress(stage, *message["progress"])
                result = message.get("result", result)
                error = message.get("error", error)
            child.wait()
        except BaseException:
            child.kill()
            child.wait()
            raise
        if error is not None:
            raise MalformedInputError(f"{stage}: {error}")
        if child.returncode != 0 or result is None:
            stderr.seek(0)
            lines = [line.strip() for line in stderr.read().splitlines() if line.strip()]
            tail = lines[-1] if lines else "no message"
            raise MalformedInputError(
                f"{stage}: llama.cpp failed (exit {child.returncode}): {tail}"
            )
        return result


@dataclass(frozen=True)
class Bench:
    """How every file is measured: threads, perplexity window, text, speed repetitions."""

    threads: int
    context: int
    text: Path
    repetitions: int


def _measure(
    path: Path, variant: str, bench: Bench, reference: tuple[str, Path], on_progress: Progress
) -> tuple[Measurement, dict[str, Any]]:
    flag, reference_file = reference
    result = run_worker(
        [
            "evaluate",
            str(path),
            str(bench.text),
            str(bench.threads),
            str(bench.context),
            flag,
            str(reference_file),
            "--repetitions",
            str(bench.repetitions),
        ],  # fmt: skip
        f"evaluate {variant}",
        on_progress,
    )
    measurement = Measurement(
        variant=variant,
        quantization=read_gguf_file(path).quantization,
        file=path.name,
        sha256=sha256_of_file(path),
        size_bytes=path.stat().st_size,
        loaded_memory_bytes=int(result["loaded_memory_bytes"]),
        prompt_tokens_per_second=float(result["prompt_tokens_per_second"]),
        generation_tokens_per_second=float(result["generation_tokens_per_second"]),
        perplexity=round(float(result["perplexity"]), 4),
        top1_agreement=result["top1_agreement"],
        kl_divergence=result["kl_divergence"],
    )
    return measurement, result


def quantize_file(
    source: Path, target: Path, variant: str, threads: int, on_progress: Progress
) -> None:
    """Write ``variant`` of ``source`` to ``target`` (via a temporary name: never half a file)."""
    partial = target.with_name(target.name + ".partial")
    try:
        run_worker(
            ["quantize", str(source), str(partial), str(VARIANTS[variant]), str(threads)],
            f"quantize {variant}",
            on_progress,
        )
        os.replace(partial, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()


def run_pipeline(
    source: Path,
    out_dir: Path,
    name: str,
    version: str,
    variants: Sequence[str],
    *,
    max_perplexity_increase: float = DEFAULT_MAX_PERPLEXITY_INCREASE,
    threads: int | None = None,
    context: int = DEFAULT_CONTEXT,
    text: Path = EVALUATION_TEXT,
    repetitions: int = DEFAULT_REPETITIONS,
    allow_requantize: bool = False,
    on_progress: Progress = lambda stage, done, total: None,
) -> QuantizationReport:
    """Quantize ``source`` into ``variants`` under ``out_dir``, measure the source and each
    variant, and gate them. Refuses a source that is not a readable GGUF model."""
    check_model_name(name)
    check_model_version(version)
    for variant in variants:
        check_model_version(variant_version(version, variant))
    if not source.is_file():
        raise MalformedInputError(f"{source} is not a file")
    # Not GGUF, or truncated: refuse before starting any child. A quantized source would
    # compound its loss into every variant (llama.cpp's quantizer asks for the same flag).
    kind = read_gguf_file(source).quantization
    if kind not in FULL_PRECISION and not allow_requantize:
        raise MalformedInputError(
            f"{source.name} is already quantized ({kind}): quantize from the model's "
            f"{'/'.join(FULL_PRECISION)} file, or pass --allow-requantize to accept "
            "the compounded loss"
        )
    if not 64 <= context <= 8192:
        raise MalformedInputError("--context must be within 64..8192 tokens")
    if max_perplexity_increase < 0:
        raise MalformedInputError("--max-ppl-increase must not be negative")
    if not 1 <= repetitions <= 20:
        raise MalformedInputError("--repetitions must be within 1..20")
    threads = threads or os.cpu_count() or 1
    bench = Bench(threads, context, text, repetitions)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError(f"cannot create {out_dir}: {e.strerror}") from e
    files = {v: out_dir / f"{name}-{version}-{v}.gguf" for v in variants}
    for variant, target in files.items():
        quantize_file(source, target, variant, threads, on_progress)
    reference = out_dir / "source-logprobs.npy"
    try:
        measured_source, counts = _measure(
            source, "source", bench, ("--save-reference", reference), on_progress
        )
        outcomes = []
        for variant, target in files.items():
            measurement, _ = _measure(
                target, variant, bench, ("--reference", reference), on_progress
            )
            outcomes.append(gate(measured_source, measurement, max_perplexity_increase))
    finally:
        with contextlib.suppress(FileNotFoundError):
            reference.unlink()
    return QuantizationReport(
        name=name,
        version=version,
        created_at=format_time(datetime.now(UTC)),
        machine=f"{platform.machine()} {os.cpu_count()} cores {platform.system()}",
        threads=threads,
        context=context,
        evaluation_text_sha256=sha256_of_file(text),
        text_tokens=int(counts["text_tokens"]),
        evaluated_tokens=int(counts["evaluated_tokens"]),
        max_perplexity_increase_percent=max_perplexity_increase,
        source=replace(measured_source, file=source.name),
        variants=tuple(outcomes),
    )
