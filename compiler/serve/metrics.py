"""The server's Prometheus metrics (`GET /metrics`), in a registry of its own.

Names follow vLLM's (`vllm:num_requests_running` -> `pagedc:num_requests_running`),
so dashboards built for it read these with a prefix change. Gauges are set by
the engine thread after every step (and once a second when idle); latencies
are measured there too, when a token is handed to its request's queue:
TTFT from the request's arrival at the server, inter-token latency between
two tokens of one sample.
"""

from __future__ import annotations

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
                   20.0, 40.0, 80.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ServerMetrics:
    def __init__(self, model_name: str):
        prometheus_client.disable_created_metrics()     # no *_created series next to every counter
        self.registry = CollectorRegistry()
        r, label = self.registry, {"model_name": model_name}

        def gauge(name, doc):
            return Gauge(f"pagedc:{name}", doc, labelnames=list(label), registry=r).labels(**label)

        def counter(name, doc):
            return Counter(f"pagedc:{name}", doc, labelnames=list(label), registry=r).labels(**label)

        def histogram(name, doc, buckets=LATENCY_BUCKETS):
            return Histogram(f"pagedc:{name}", doc, labelnames=list(label), buckets=buckets, registry=r).labels(**label)

        self.running = gauge("num_requests_running", "Requests holding KV blocks (prefilling or decoding).")
        self.waiting = gauge("num_requests_waiting", "Requests queued for admission (new or preempted).")
        self.kv_usage = gauge("kv_cache_usage_perc", "Share of KV blocks held by requests (1 = full).")
        self.prefix_hit_rate = gauge("prefix_cache_hit_rate", "Share of queried prompt tokens found in the prefix cache.")
        self.preemptions = counter("num_preemptions", "Requests preempted (blocks freed, recomputed later).")
        self.prompt_tokens = counter("prompt_tokens", "Prompt tokens received.")
        self.generation_tokens = counter("generation_tokens", "Tokens generated.")
        self._finished = Counter("pagedc:request_success", "Samples finished, by finish reason.",
                                labelnames=[*label, "finished_reason"], registry=r)
        self.ttft = histogram("time_to_first_token_seconds", "Time from a request's arrival to its first token.")
        self.itl = histogram("inter_token_latency_seconds", "Time between two tokens of one sample.")
        self.e2e_latency = histogram("e2e_request_latency_seconds", "Time from arrival to a sample's last token.")
        self.step_batch_size = histogram("step_batch_size", "Requests that sampled a token in one engine step.",
                                         BATCH_BUCKETS)
        self._label = label

    def finish(self, reason: str) -> None:
        """Count one finished sample: "stop", "length" or "abort"."""
        self._finished.labels(**self._label, finished_reason=reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
