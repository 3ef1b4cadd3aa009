"""deploy/monitoring: the alert rules pass `promtool check rules` and their own unit tests,
every dashboard query parses, the committed dashboards are what their source renders, and
every metric the rules and dashboards name is one a real controller and agent expose (whose
/metrics pass `promtool check metrics`)."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import wait_for
from tests.integration.fleets import one_agent_fleet

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy/monitoring"
RULES = MONITORING / "rules/edgefleet-alerts.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is absent (Debian's prometheus; `make system-deps`)"
)
METRIC = re.compile(r"\bedgefleet_[a-z0-9_]+\b")
# Grafana's variables, replaced by what they stand for so that Prometheus's parser reads them
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$device": ".*", "$model": ".*", "$instance": ".*"}


def _dashboards() -> ModuleType:
    path = MONITORING / "grafana/dashboards.py"
    spec = importlib.util.spec_from_file_location("edgefleet_dashboards", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], input=stdin, capture_output=True, text=True, timeout=60, check=False
    )


def _queries() -> list[str]:
    """Every dashboard query with Grafana's variables filled in (label_values() queries
    are Grafana's, not PromQL: their metric is checked, not their syntax)."""
    return [
        _fill(query)
        for query in _dashboards().expressions()
        if not query.startswith("label_values(")
    ]


def _fill(query: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        query = query.replace(variable, value)
    assert "$" not in query, f"a Grafana variable this test does not know: {query}"
    return query


def _used_metrics() -> set[str]:
    text = RULES.read_text() + "\n".join(_dashboards().expressions())
    return set(METRIC.findall(text))


def test_the_committed_dashboards_are_what_their_source_renders() -> None:
    rendered = _dashboards().rendered_files()
    committed = {p.name: p.read_text() for p in (MONITORING / "grafana/dashboards").glob("*.json")}
    assert committed == rendered, "run: python deploy/monitoring/grafana/dashboards.py"
    for text in rendered.values():
        board = json.loads(text)
        ids = [panel["id"] for panel in board["panels"]]
        assert len(ids) == len(set(ids))
        for panel in board["panels"]:  # inside Grafana's 24-column grid, no overlap by row
            grid = panel["gridPos"]
            assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24


@needs_promtool
def test_alert_rules_and_configs_pass_promtool() -> None:
    checked = _promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = _promtool("test", "rules", str(MONITORING / "rules/edgefleet-alerts.test.yml"))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    config = _promtool("check", "config", str(MONITORING / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr
    agent = _promtool("check", "config", "--agent", str(MONITORING / "prometheus-agent.yml"))
    assert agent.returncode == 0, agent.stdout + agent.stderr


@needs_promtool
def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    """Prometheus's own parser reads each query (as a recording rule's expression)."""
    queries = _queries()
    assert len(queries) >= 30
    rules = {
        "groups": [
            {
                "name": "dashboard-queries",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": q} for i, q in enumerate(queries)
                ],
            }
        ]
    }
    path = tmp_path / "queries.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    checked = _promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    broken = tmp_path / "broken.yml"  # and the check can fail
    rules["groups"][0]["rules"] = [{"record": "dashboard:broken", "expr": "sum(rate(x[1m])"}]
    broken.write_text(json.dumps(rules))
    assert _promtool("check", "rules", str(broken)).returncode != 0


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """/metrics of a real controller and of its agent once the agent has synced and pushed
    its audit records."""
    with one_agent_fleet(tmp_path_factory.mktemp("monitoring")) as (fleet, _device):
        api = (fleet.agent_dir("gw") / "api.addr").read_text().strip()

        def synced_and_pushed() -> tuple[str, str] | None:
            agent, controller = _scrape(api), _scrape(fleet.metrics_address)
            pushed = "edgefleet_audit_records_ingested_total 0.0" not in controller
            return (
                (controller, agent) if pushed and "edgefleet_last_sync_timestamp" in agent else None
            )

        yield wait_for("a sync and an audit push", synced_and_pushed, 60)


def _scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as reply:
        assert reply.status == 200
        return str(reply.read().decode())


@pytest.mark.integration
def test_every_metric_the_rules_and_dashboards_use_is_exposed(scraped: tuple[str, str]) -> None:
    controller, agent = scraped
    exposed = _exposed(controller) | _exposed(agent)
    used = _used_metrics()
    assert len(used) >= 20
    assert used - exposed == set()
    assert re.search(r"^edgefleet_trust_fresh_timestamp_seconds \d", agent, re.M)
    assert re.search(r"^edgefleet_queue_capacity \d", agent, re.M)
    assert re.search(r'^edgefleet_audit_pushes_total\{result="stored"\} [1-9]', controller, re.M)


@pytest.mark.integration
@needs_promtool
def test_both_metrics_outputs_pass_promtool(scraped: tuple[str, str]) -> None:
    for body in scraped:
        checked = _promtool("check", "metrics", stdin=body)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert checked.stdout + checked.stderr == ""


def _exposed(body: str) -> set[str]:
    """Every series name a body's families can carry, samples or not yet."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("_sum", "_count", "_created"),
    }
    names: set[str] = set()
    for family in text_string_to_metric_families(body):
        names.add(family.name)
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ()))
    return names
