"""Child process of the quantization pipeline: the only place llama.cpp runs.

``python -m edgefleet.controller.catalog.quantization.worker quantize SRC DST FTYPE THREADS`` and
``python -m edgefleet.controller.catalog.quantization.worker evaluate MODEL TEXT THREADS N_CTX
[--save-reference FILE | --reference FILE] [--repetitions N]`` write JSON lines to stdout:
``{"progress": [done, total]}`` while working, then ``{"result": {...}}`` or
``{"error": "one line"}`` (exit status 1). A crash in llama.cpp ends only this process.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import re
import resource
import sys
from pathlib import Path
from typing import Any

from edgefleet.speed import (
    DEFAULT_GENERATED_TOKENS,
    DEFAULT_PROMPT_TOKENS,
    DEFAULT_REPETITIONS,
    measure_speed,
)

TENSOR_PROGRESS = re.compile(r"\[\s*(\d+)/\s*(\d+)\]")
GGML_LOG_LEVEL_ERROR = 4


class WorkerError(Exception):
    """A failure to report as one line."""


def _emit(kind: str, value: Any) -> None:
    sys.stdout.write(json.dumps({kind: value}) + "\n")
    sys.stdout.flush()


def resident_bytes() -> int:
    """This process's resident set size now (Linux), else its peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def quantize(source: Path, target: Path, ftype: int, threads: int) -> dict[str, Any]:
    """llama.cpp's quantizer, reporting each tensor as it is written."""
    import llama_cpp

    errors: list[str] = []

    @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
    def on_log(level: int, text: bytes, user_data: Any) -> None:
        line = text.decode("utf-8", errors="replace")
        match = TENSOR_PROGRESS.search(line)
        if match:
            _emit("progress", [int(match.group(1)), int(match.group(2))])
        if level == GGML_LOG_LEVEL_ERROR and line.strip():
            errors.append(line.strip())

    llama_cpp.llama_log_set(on_log, ctypes.c_void_p(0))
    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = threads
    params.ftype = ftype
    params.allow_requantize = True
    status = llama_cpp.llama_model_quantize(
        str(source).encode(), str(target).encode(), ctypes.byref(params)
    )
    if status != 0:
        raise WorkerError(errors[-1] if errors else f"llama.cpp's quantizer failed ({status})")
    return {"size_bytes": target.stat().st_size}


def _load(model: Path, threads: int, **options: Any) -> Any:
    import llama_cpp

    try:
        return llama_cpp.Llama(
            model_path=str(model),
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
            **options,
        )
    except (ValueError, RuntimeError, OSError) as e:
        raise WorkerError(f"llama.cpp cannot load {model.name}: {e}") from e


def _log_softmax(rows: Any) -> Any:
    import numpy as np

    shifted = rows - rows.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def evaluate(
    model: Path,
    text: Path,
    threads: int,
    n_ctx: int,
    save_reference: Path | None,
    reference: Path | None,
    repetitions: int = DEFAULT_REPETITIONS,
) -> dict[str, Any]:
    """Memory when loaded and speed (like the agent's bench), then perplexity over ``text``
    in windows of ``n_ctx`` tokens scoring the second half of each (as llama.cpp's
    perplexity tool does) and, against a reference's log-probabilities, top-1 agreement
    and mean KL divergence."""
    import llama_cpp  # noqa: F401 - loaded first: the libraries' own pages are not the model's
    import numpy as np

    before = resident_bytes()
    # Speed as `edgefleet-agent bench` measures it on devices, so the figures compare.
    llm = _load(
        model,
        threads,
        n_ctx=DEFAULT_PROMPT_TOKENS + DEFAULT_GENERATED_TOKENS + 8,
        n_batch=DEFAULT_PROMPT_TOKENS,
    )
    speed = measure_speed(llm, DEFAULT_PROMPT_TOKENS, DEFAULT_GENERATED_TOKENS, repetitions)
    loaded_memory = resident_bytes() - before
    del llm

    llm = _load(model, threads, n_ctx=n_ctx, n_batch=n_ctx, logits_all=True)
    tokens = llm.tokenize(text.read_text(encoding="utf-8").encode(), add_bos=False, special=False)
    window = n_ctx - 1
    chunks = len(tokens) // window
    if chunks < 2:
        raise WorkerError(f"evaluation text has {len(tokens)} tokens; need {2 * window}")
    first = n_ctx // 2
    scored_per_chunk = n_ctx - 1 - first
    rows_total = chunks * scored_per_chunk
    saved = (
        np.lib.format.open_memmap(
            save_reference, mode="w+", dtype=np.float16, shape=(rows_total, llm.n_vocab())
        )
        if save_reference
        else None
    )
    expected = np.load(reference, mmap_mode="r") if reference else None
    if expected is not None and expected.shape != (rows_total, llm.n_vocab()):
        raise WorkerError("the model's vocabulary or tokenizer differs from the source's")
    nll, agree, kl = 0.0, 0, 0.0
    for chunk in range(chunks):
        sequence = [llm.token_bos(), *tokens[chunk * window : (chunk + 1) * window]]
        llm.reset()
        llm.eval(sequence)
        logits = np.asarray(llm.scores[first : n_ctx - 1], dtype=np.float32)
        log_probs = _log_softmax(logits)
        targets = np.asarray(sequence[first + 1 : n_ctx])
        nll -= float(log_probs[np.arange(len(targets)), targets].sum())
        rows = slice(chunk * scored_per_chunk, (chunk + 1) * scored_per_chunk)
        if saved is not None:
            saved[rows] = log_probs
        if expected is not None:
            source = np.asarray(expected[rows], dtype=np.float32)
            agree += int((source.argmax(axis=1) == log_probs.argmax(axis=1)).sum())
            kl += float((np.exp(source) * (source - log_probs)).sum())
        _emit("progress", [chunk + 1, chunks])
    if saved is not None:
        saved.flush()
    return {
        "loaded_memory_bytes": loaded_memory,
        "prompt_tokens_per_second": speed.prompt_tokens_per_second,
        "generation_tokens_per_second": speed.generation_tokens_per_second,
        "perplexity": math.exp(nll / rows_total),
        "evaluated_tokens": rows_total,
        "text_tokens": len(tokens),
        "top1_agreement": agree / rows_total if expected is not None else None,
        "kl_divergence": kl / rows_total if expected is not None else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edgefleet.controller.catalog.quantization.worker"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    q = commands.add_parser("quantize")
    q.add_argument("source", type=Path)
    q.add_argument("target", type=Path)
    q.add_argument("ftype", type=int)
    q.add_argument("threads", type=int)
    e = commands.add_parser("evaluate")
    e.add_argument("model", type=Path)
    e.add_argument("text", type=Path)
    e.add_argument("threads", type=int)
    e.add_argument("n_ctx", type=int)
    e.add_argument("--save-reference", type=Path)
    e.add_argument("--reference", type=Path)
    e.add_argument("--repetitions", type=int, default=DEFAULT_REPETITIONS)
    args = parser.parse_args(argv)
    try:
        if args.command == "quantize":
            result = quantize(args.source, args.target, args.ftype, args.threads)
        else:
            result = evaluate(
                args.model,
                args.text,
                args.threads,
                args.n_ctx,
                args.save_reference,
                args.reference,
                args.repetitions,
            )
    except (WorkerError, OSError, ValueError) as e:
        _emit("error", str(e))
        return 1
    _emit("result", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
