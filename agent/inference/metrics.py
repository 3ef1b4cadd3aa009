"""Prometheus metrics of the local API (prometheus-client, one registry per agent)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
RATE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


class ApiMetrics:
    """The counters, gauges and histograms /metrics exposes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "edgefleet_inference_requests",
            "Inference requests by endpoint, model and outcome",
            ["endpoint", "model", "outcome"],
            registry=r,
        )
        self.auth_failures = Counter(
            "edgefleet_api_auth_failures",
            "Requests refused for a missing or invalid bearer token (every one; the audit log "
            "records the first per source and minute)",
            ["reason"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            "edgefleet_prompt_tokens", "Prompt tokens processed", ["model"], registry=r
        )
        self.cached_tokens = Counter(
            "edgefleet_cached_prompt_tokens",
            "Prompt tokens reused from a slot's KV cache instead of evaluated again",
            ["model"],
            registry=r,
        )
        self.completion_tokens = Counter(
            "edgefleet_completion_tokens", "Completion tokens generated", ["model"], registry=r
        )
        self.embedded_inputs = Counter(
            "edgefleet_embedding_inputs",
            "Inputs turned into embedding vectors",
            ["model"],
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "edgefleet_time_to_first_token_seconds",
            "Time from request to first token",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens_per_second = Histogram(
            "edgefleet_generation_tokens_per_second",
            "Generation speed after the first token",
            ["model"],
            buckets=RATE_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "edgefleet_queue_depth", "Requests waiting for a model slot", registry=r
        )
        self.queue_capacity = Gauge(
            "edgefleet_queue_capacity",
            "Requests that may wait for a slot before the next is refused with 429 (max_queued)",
            registry=r,
        )
        self.loaded_models = Gauge("edgefleet_loaded_models", "Models in memory", registry=r)
        self.model_memory = Gauge(
            "edgefleet_model_memory_bytes",
            "Estimated memory of each loaded model",
            ["model"],
            registry=r,
        )
        self.memory_budget = Gauge(
            "edgefleet_memory_budget_bytes", "Memory budget for loaded models", registry=r
        )

        self.audit_unacknowledged = Gauge(
            "edgefleet_audit_unacknowledged_records",
            "Audit records written on the device and not yet acknowledged by the controller",
            registry=r,
        )
        self.audit_backlog_alarm = Gauge(
            "edgefleet_audit_backlog_alarm",
            "1 while the unacknowledged backlog is at or over audit_warn_unacknowledged",
            registry=r,
        )

        self.trust_fresh = Gauge(
            "edgefleet_trust_fresh_timestamp_seconds",
            "When trust metadata last verified as fresh (Unix time; absent until the first "
            "sync or bundle import)",
            registry=r,
        )
        self.trust_max_offline = Gauge(
            "edgefleet_trust_max_offline_seconds",
            "How long the device may go without fresh trust metadata (max_offline_days)",
            registry=r,
        )
        self.last_sync = Gauge(
            "edgefleet_last_sync_timestamp_seconds",
            "When the last sync with the controller completed (Unix time; absent until then)",
            registry=r,
        )

    def exposition(self) -> bytes:
        """The text exposition format."""
        return bytes(generate_latest(self.registry))
