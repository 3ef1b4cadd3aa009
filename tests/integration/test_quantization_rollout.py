"""From one GGUF file to a fleet: `models quantize` publishes the variants that pass their
gate as one family, a rollout gives each device the best variant that fits its memory,
and `models report` shows the pipeline's measurements beside the devices' own speed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgefleet.controller.catalog.quantization.pipeline import EVALUATION_TEXT
from edgefleet.memory import estimate_memory
from tests.harness import Fleet, wait_for
from tests.integration.fleets import models, serving

pytestmark = [pytest.mark.integration, pytest.mark.model]

KV_BYTES_PER_TOKEN = 30 * 3 * (64 + 64) * 2  # SmolLM2-135M: 30 layers, 3 KV heads of 64
CONTEXT = 2048  # the agent's default n_ctx, one slot


def test_each_device_runs_the_best_variant_that_fits(tmp_path: Path, smollm2_f16: Path) -> None:
    fleet = Fleet(tmp_path)
    try:
        fleet.init_controller()
        fleet.start_controller()
        out, source = tmp_path / "variants", str(smollm2_f16)
        text = tmp_path / "short.txt"  # a few 64-token windows: this test is about the rollout
        text.write_text(EVALUATION_TEXT.read_text()[:1500])
        quantized = fleet.ctl(
            "models", "quantize", source, "--name", "smollm2", "--version", "1.0.0",
            "--variants", "q4_0,q8_0", "--max-ppl-increase", "1000", "--repetitions", "1",
            "--context", "64", "--text", str(text), "--out", str(out),
        ).stdout  # fmt: skip
        assert "published smollm2@1.0.0+q4_0" in quantized
        assert "published smollm2@1.0.0+q8_0" in quantized
        report = json.loads((out / "report.json").read_text())
        size = {
            v["measurement"]["variant"]: v["measurement"]["size_bytes"] for v in report["variants"]
        }
        need = {
            variant: estimate_memory(length, KV_BYTES_PER_TOKEN, CONTEXT, 1).total
            for variant, length in size.items()
        }
        # gw-small's budget holds q4_0 but not q8_0; gw-big holds either.
        small_budget = (need["q4_0"] + need["q8_0"]) // 2
        ids = {}
        for name, budget in (("gw-big", 4 * need["q8_0"]), ("gw-small", small_budget)):
            ids[name] = fleet.enroll(name, {"site": "lab"})
            fleet.start_agent(name, env={"EDGEFLEET_AGENT_MEMORY_BUDGET_BYTES": str(budget)})

        wait_for(
            "both devices to report what they can hold",
            lambda: (
                True
                if all(d["resources"]["memory_budget"] for d in fleet.devices())
                and len(fleet.devices()) == 2
                else None
            ),
            30,
        )
        rollout = fleet.ctl("rollout", "create", "smollm2@1.0.0", "--selector", "site=lab")
        assert "assigned to 2 device(s)" in rollout.stdout
        assert f"{ids['gw-small']}: smollm2@1.0.0+q4_0 (best quality that fits)" in rollout.stdout
        for name, variant in (("gw-big", "q8_0"), ("gw-small", "q4_0")):
            wait_for(
                f"{name} to serve smollm2@1.0.0+{variant}",
                serving(fleet, name, f"smollm2@1.0.0+{variant}"),
                180,
            )
        assert "q8_0" not in models(fleet, "gw-small")  # never downloaded what cannot fit

        fleet.agent("gw-small", "bench", "smollm2", "--prompt-tokens", "64", "--gen-tokens", "16")
        wait_for(
            "gw-small's bench at the controller",
            lambda: next(
                (True for d in fleet.devices() if d["device_id"] == ids["gw-small"] and d["bench"]),
                None,
            ),
            60,
        )
        shown = fleet.ctl("models", "report", "smollm2").stdout
        assert "1.0.0+q4_0" in shown and "1.0.0+q8_0" in shown
        doc = json.loads(fleet.ctl("models", "report", "smollm2", "--json").stdout)
        evaluations = {v["version"]: v["evaluation"] for v in doc["versions"]}
        assert evaluations["1.0.0+q8_0"]["perplexity"] <= evaluations["1.0.0+q4_0"]["perplexity"]
        (speed,) = doc["speeds"]
        assert speed["version"] == "1.0.0+q4_0" and speed["devices"] == 1
        assert speed["generation_tokens_per_second"] > 0
    finally:
        fleet.stop_all()
