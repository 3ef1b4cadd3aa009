"""The Grafana dashboards of deploy/monitoring, written as data and rendered to JSON.

`python deploy/monitoring/grafana/dashboards.py` rewrites grafana/dashboards/*.json; a test
checks the committed files equal what this renders, that every query parses (promtool)
and that every metric it names is one a real agent or controller exposes.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

OUT = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"


@dataclass(frozen=True)
class Panel:
    """One panel: a title, its queries (expression, legend) and how to show them."""

    title: str
    queries: tuple[tuple[str, str], ...]
    unit: str = "short"
    kind: str = "timeseries"  # or "stat", "table"
    width: int = 12
    description: str = ""


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    rows: tuple[tuple[str, tuple[Panel, ...]], ...]
    variables: tuple[tuple[str, str], ...] = field(default=())  # (name, label_values query)


def _variable(name: str, query: str) -> dict[str, object]:
    return {
        "name": name,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": name},
        "definition": query,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "refresh": 2,
        "sort": 1,
    }


def _panel(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, object]:
    height = 5 if panel.kind == "stat" else 8
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}}
        if panel.kind == "timeseries"
        else {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}},
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": DATASOURCE,
                "expr": expr,
                "legendFormat": legend,
                "instant": panel.kind != "timeseries",
                "range": panel.kind == "timeseries",
            }
            for i, (expr, legend) in enumerate(panel.queries)
        ],
    }


def render(board: Dashboard) -> dict[str, object]:
    """The dashboard's JSON model (Grafana 10+; schemaVersion 39)."""
    panels: list[dict[str, object]] = []
    y, panel_id = 0, 1
    for row_title, row in board.rows:
        panels.append(
            {
                "id": panel_id,
                "type": "row",
                "title": row_title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        panel_id, y, x, tallest = panel_id + 1, y + 1, 0, 0
        for panel in row:
            if x + panel.width > 24:
                x, y, tallest = 0, y + tallest, 0
            rendered = _panel(panel, panel_id, x, y)
            panels.append(rendered)
            tallest = max(tallest, 5 if panel.kind == "stat" else 8)
            panel_id, x = panel_id + 1, x + panel.width
        y += tallest
    return {
        "uid": board.uid,
        "title": board.title,
        "description": board.description,
        "tags": ["edgefleet"],
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "timezone": "browser",
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "type": "datasource",
                    "query": "prometheus",
                    "label": "Prometheus",
                    "current": {},
                }
            ]
            + [_variable(name, query) for name, query in board.variables]
        },
        "annotations": {"list": []},
        "panels": panels,
    }


DEVICE = 'device=~"$device"'
MODEL = 'model=~"$model"'

FLEET = Dashboard(
    uid="edgefleet-fleet",
    title="edgefleet / Fleet overview",
    description="Devices, rollouts and audit across the fleet (controller and agent metrics).",
    rows=(
        (
            "Fleet",
            (
                Panel(
                    "Active devices",
                    (('sum(max by (state) (edgefleet_devices{state="active"}))', "active"),),
                    kind="stat",
                    width=4,
                ),
                Panel(
                    "Stale devices",
                    (("max(edgefleet_devices_stale)", "stale"),),
                    kind="stat",
                    width=4,
                    description="Active devices that have not synced within stale_after_seconds",
                ),
                Panel(
                    "Halted rollouts",
                    (('max(edgefleet_rollouts{state="halted"})', "halted"),),
                    kind="stat",
                    width=4,
                ),
                Panel(
                    "Tamper alerts",
                    (("max(edgefleet_audit_tamper_alerts)", "chains"),),
                    kind="stat",
                    width=4,
                ),
                Panel(
                    "Controller replicas up",
                    (('sum(up{job="edgefleet-controller"})', "up"),),
                    kind="stat",
                    width=4,
                ),
                Panel(
                    "Database reachable",
                    (("min(edgefleet_database_up)", "up"),),
                    kind="stat",
                    width=4,
                ),
                Panel("Devices by state", (("max by (state) (edgefleet_devices)", "{{state}}"),)),
                Panel("Rollouts by state", (("max by (state) (edgefleet_rollouts)", "{{state}}"),)),
            ),
        ),
        (
            "Gateways",
            (
                Panel(
                    "Unacknowledged audit records (top 10)",
                    (("topk(10, edgefleet_audit_unacknowledged_records)", "{{device}}"),),
                ),
                Panel(
                    "Days since trust metadata was fresh (top 10)",
                    (
                        (
                            "topk(10, (time() - edgefleet_trust_fresh_timestamp_seconds) / 86400)",
                            "{{device}}",
                        ),
                    ),
                    unit="d",
                ),
                Panel(
                    "Minutes since the last sync (top 10)",
                    (
                        (
                            "topk(10, (time() - edgefleet_last_sync_timestamp_seconds) / 60)",
                            "{{device}}",
                        ),
                    ),
                    unit="m",
                ),
                Panel(
                    "Completion tokens/s, whole fleet",
                    (
                        (
                            f"sum by (model) (rate(edgefleet_completion_tokens_total[{RATE}]))",
                            "{{model}}",
                        ),
                    ),
                ),
            ),
        ),
    ),
)

INFERENCE = Dashboard(
    uid="edgefleet-agent-inference",
    title="edgefleet / Agent inference",
    description="The local OpenAI-compatible API of each gateway: speed, latency, queue, errors.",
    variables=(
        ("device", "label_values(edgefleet_inference_requests_total, device)"),
        ("model", "label_values(edgefleet_inference_requests_total, model)"),
    ),
    rows=(
        (
            "Throughput",
            (
                Panel(
                    "Completion tokens/s",
                    (
                        (
                            f"sum by (device, model) (rate(edgefleet_completion_tokens_total{{{DEVICE}, {MODEL}}}[{RATE}]))",
                            "{{device}} {{model}}",
                        ),
                    ),
                ),
                Panel(
                    "Prompt tokens/s (and reused from cache)",
                    (
                        (
                            f"sum by (model) (rate(edgefleet_prompt_tokens_total{{{DEVICE}, {MODEL}}}[{RATE}]))",
                            "{{model}} prompt",
                        ),
                        (
                            f"sum by (model) (rate(edgefleet_cached_prompt_tokens_total{{{DEVICE}, {MODEL}}}[{RATE}]))",
                            "{{model}} cached",
                        ),
                    ),
                ),
                Panel(
                    "Generation speed per stream (median)",
                    (
                        (
                            f"histogram_quantile(0.5, sum by (le, model) (rate(edgefleet_generation_tokens_per_second_bucket{{{DEVICE}, {MODEL}}}[{RATE}])))",
                            "{{model}}",
                        ),
                    ),
                    unit="none",
                ),
                Panel(
                    "Time to first token",
                    (
                        (
                            f"histogram_quantile(0.5, sum by (le, model) (rate(edgefleet_time_to_first_token_seconds_bucket{{{DEVICE}, {MODEL}}}[{RATE}])))",
                            "{{model}} p50",
                        ),
                        (
                            f"histogram_quantile(0.95, sum by (le, model) (rate(edgefleet_time_to_first_token_seconds_bucket{{{DEVICE}, {MODEL}}}[{RATE}])))",
                            "{{model}} p95",
                        ),
                    ),
                    unit="s",
                ),
            ),
        ),
        (
            "Requests",
            (
                Panel(
                    "Requests/s by outcome",
                    (
                        (
                            f"sum by (outcome) (rate(edgefleet_inference_requests_total{{{DEVICE}, {MODEL}}}[{RATE}]))",
                            "{{outcome}}",
                        ),
                    ),
                    unit="reqps",
                ),
                Panel(
                    "Failing share per model",
                    (
                        (
                            f'sum by (device, model) (rate(edgefleet_inference_requests_total{{{DEVICE}, {MODEL}, outcome=~"error|unavailable|refused"}}[{RATE}])) / sum by (device, model) (rate(edgefleet_inference_requests_total{{{DEVICE}, {MODEL}}}[{RATE}]))',
                            "{{device}} {{model}}",
                        ),
                    ),
                    unit="percentunit",
                ),
                Panel(
                    "Queue depth and capacity",
                    (
                        (f"edgefleet_queue_depth{{{DEVICE}}}", "{{device}} waiting"),
                        (f"edgefleet_queue_capacity{{{DEVICE}}}", "{{device}} max_queued"),
                    ),
                ),
                Panel(
                    "Refused bearer tokens/s",
                    (
                        (
                            f"sum by (device, reason) (rate(edgefleet_api_auth_failures_total{{{DEVICE}}}[{RATE}]))",
                            "{{device}} {{reason}}",
                        ),
                    ),
                    unit="reqps",
                ),
            ),
        ),
        (
            "Memory",
            (
                Panel(
                    "Loaded models' memory and the budget",
                    (
                        (
                            f"sum by (device) (edgefleet_model_memory_bytes{{{DEVICE}}})",
                            "{{device}} loaded",
                        ),
                        (f"edgefleet_memory_budget_bytes{{{DEVICE}}}", "{{device}} budget"),
                    ),
                    unit="bytes",
                ),
                Panel(
                    "Models in memory", ((f"edgefleet_loaded_models{{{DEVICE}}}", "{{device}}"),)
                ),
            ),
        ),
    ),
)

CONTROLLER = Dashboard(
    uid="edgefleet-controller",
    title="edgefleet / Controller",
    description="The controller's replicas: syncs, gRPC calls, watch streams, rollouts, audit ingest.",
    variables=(("instance", 'label_values(up{job="edgefleet-controller"}, instance)'),),
    rows=(
        (
            "Devices",
            (
                Panel(
                    "Syncs/s by answer",
                    (
                        (
                            f'sum by (answer) (rate(edgefleet_syncs_total{{instance=~"$instance"}}[{RATE}]))',
                            "{{answer}}",
                        ),
                    ),
                    unit="reqps",
                    description="kept: answered from the replica's memory; full: one transaction",
                ),
                Panel(
                    "Open watch streams",
                    (
                        (
                            'sum by (instance) (edgefleet_watch_streams{instance=~"$instance"})',
                            "{{instance}}",
                        ),
                    ),
                ),
                Panel(
                    "Audit records stored/s",
                    (
                        (
                            f'sum by (instance) (rate(edgefleet_audit_records_ingested_total{{instance=~"$instance"}}[{RATE}]))',
                            "{{instance}}",
                        ),
                    ),
                    unit="rps",
                ),
                Panel(
                    "Audit pushes/s by result",
                    (
                        (
                            f'sum by (result) (rate(edgefleet_audit_pushes_total{{instance=~"$instance"}}[{RATE}]))',
                            "{{result}}",
                        ),
                    ),
                    unit="reqps",
                ),
            ),
        ),
        (
            "gRPC",
            (
                Panel(
                    "Calls/s by method",
                    (
                        (
                            f'sum by (method) (rate(edgefleet_grpc_calls_total{{instance=~"$instance"}}[{RATE}]))',
                            "{{method}}",
                        ),
                    ),
                    unit="reqps",
                ),
                Panel(
                    "Errors/s by code",
                    (
                        (
                            f'sum by (code) (rate(edgefleet_grpc_calls_total{{instance=~"$instance", code!="OK"}}[{RATE}]))',
                            "{{code}}",
                        ),
                    ),
                    unit="reqps",
                ),
                Panel(
                    "Latency p95 by method",
                    (
                        (
                            f'histogram_quantile(0.95, sum by (le, method) (rate(edgefleet_grpc_call_seconds_bucket{{instance=~"$instance", method!~".*Watch"}}[{RATE}])))',
                            "{{method}}",
                        ),
                    ),
                    unit="s",
                    description="Watch streams are left out: they last until the device leaves",
                ),
                Panel(
                    "Latency p99, all unary calls",
                    (
                        (
                            f'histogram_quantile(0.99, sum by (le) (rate(edgefleet_grpc_call_seconds_bucket{{instance=~"$instance", method!~".*Watch"}}[{RATE}])))',
                            "p99",
                        ),
                    ),
                    unit="s",
                ),
            ),
        ),
        (
            "Rollouts and database",
            (
                Panel("Rollouts by state", (("max by (state) (edgefleet_rollouts)", "{{state}}"),)),
                Panel(
                    "Database reachable per replica",
                    (('edgefleet_database_up{instance=~"$instance"}', "{{instance}}"),),
                ),
            ),
        ),
    ),
)

DASHBOARDS = {"fleet-overview": FLEET, "agent-inference": INFERENCE, "controller": CONTROLLER}


def rendered_files() -> dict[str, str]:
    """File name -> JSON text, as committed."""
    return {
        f"{name}.json": json.dumps(render(board), indent=2, sort_keys=True) + "\n"
        for name, board in DASHBOARDS.items()
    }


def expressions() -> list[str]:
    """Every query of every dashboard and variable, as written (with Grafana variables)."""
    return [
        expr
        for board in DASHBOARDS.values()
        for _, row in board.rows
        for panel in row
        for expr, _ in panel.queries
    ] + [query for board in DASHBOARDS.values() for _, query in board.variables]


def main() -> int:
    OUT.mkdir(exist_ok=True)
    for name, text in rendered_files().items():
        (OUT / name).write_text(text)
        print(f"wrote {OUT / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
