"""Prometheus metrics of one ``anydepth serve`` instance (``GET /metrics``, text exposition format).

Each server owns its registry, so several servers in one process (tests, notebooks) never share counters.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
CHECK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class ServerMetrics:
    """Counters, gauges and histograms the worker and the HTTP layer update."""

    def __init__(self, queue_depth: Callable[[], float], active: Callable[[], float]):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("anydepth_requests", "HTTP requests answered, by route and status",
                                ["route", "status"], registry=r)
        self.completions = Counter("anydepth_completions", "chat completions finished, by finish reason",
                                   ["finish_reason"], registry=r)
        self.halts = Counter("anydepth_halts", "answers the guard halted", registry=r)
        self.checks = Counter("anydepth_checks", "guard checks run, by outcome", ["flagged"], registry=r)
        self.check_latency = Histogram("anydepth_check_latency_seconds", "wall time of one guard check forward "
                                       "(all rows of a batch)", buckets=CHECK_BUCKETS, registry=r)
        self.request_latency = Histogram("anydepth_request_latency_seconds", "time from a completion request's "
                                         "arrival to its last byte", buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("anydepth_generated_tokens", "tokens generated for clients", registry=r)
        self.batch_size = Histogram("anydepth_batch_size", "requests per batched generation",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.cancelled = Counter("anydepth_cancelled", "requests cancelled by a client disconnect or timeout",
                                 registry=r)
        self.tokens_per_s = Gauge("anydepth_tokens_per_second", "generated tokens per second over the last batch",
                                  registry=r)
        Gauge("anydepth_queue_depth", "requests waiting for the model", registry=r).set_function(queue_depth)
        Gauge("anydepth_active_requests", "requests accepted and not yet finished",
              registry=r).set_function(active)

    def render(self) -> bytes:
        return generate_latest(self.registry)
