"""The quantization pipeline's full report for the bundled model (issue 9).

Makes an F16 GGUF from the bundled SmolLM2-135M Q4_1 (llama.cpp dequantizes it), then runs
exactly what `edgefleetctl models quantize --no-publish` runs: q4_0, q5_1, q8_0 and q4_k_m
variants, each measured against the F16 source on the bundled evaluation text — file size,
resident memory when loaded, prompt (pp) and generation (tg) tokens/s the way
`edgefleet-agent bench` measures them, perplexity, top-1 agreement and KL divergence —
and gated at +25% perplexity. Speed is the median of five runs (this VM's figures vary
from run to run). Prints the table; `--docs` also refreshes the chart and JSON
in docs/images/ that docs/quantization.md shows.

Note what the source is: F16 holding the Q4_1 weights exactly, so the variants are
re-quantizations of already 4-bit weights; a model quantized from its original F16/BF16
checkpoint loses less at every type.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from edgefleet.bundled import bundled_model_path
from edgefleet.controller.catalog.quantization.pipeline import quantize_file, run_pipeline
from edgefleet.controller.catalog.quantization.report import format_table, write_chart
from edgefleet.controller.catalog.quantization.variants import DEFAULT_VARIANTS

DOCS = Path(__file__).resolve().parent.parent / "docs" / "images"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    parser.add_argument("--repetitions", type=int, default=5, help="speed runs per file")
    parser.add_argument("--docs", action="store_true", help="write the chart and JSON to docs/")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgefleet-quantize-") as tmp:
        work = Path(tmp)
        source = work / "smollm2-f16.gguf"
        quantize_file(bundled_model_path(), source, "f16", os.cpu_count() or 1, lambda *_: None)
        report = run_pipeline(source, work / "out", "smollm2", "1.0.0", args.variants.split(","))
        print(format_table(report))
        chart = write_chart(report, work / "out")
        if args.docs:
            DOCS.mkdir(parents=True, exist_ok=True)
            shutil.copy(chart, DOCS / "quantization-smollm2.png")
            report.write(work / "out")
            shutil.copy(work / "out" / "report.json", DOCS / "quantization-smollm2.json")
            print(f"wrote {DOCS / 'quantization-smollm2.png'} and its JSON")


if __name__ == "__main__":
    main()
