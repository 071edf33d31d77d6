"""Prometheus metrics of the model server, served by KServe at /metrics (docs/serving.md 3).

Beside KServe's own `request_predict_seconds` etc.: end-to-end request latency by protocol and status,
images generated (rate() of it is images/s), the size of every generated batch, and the throughput of the
last batch. All live in prometheus_client's default registry, the one KServe exposes.
"""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

REQUEST_LATENCY = Histogram("rglcd_request_latency_seconds", "time from a request's arrival to its images",
                            ["protocol", "status"], buckets=LATENCY_BUCKETS)
IMAGES = Counter("rglcd_images_generated_total", "images generated (rate() = images/s)")
BATCH_SIZE = Histogram("rglcd_batch_size", "images generated together in one batch",
                       buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64))
BATCH_SECONDS = Histogram("rglcd_batch_seconds", "time to generate one batch", buckets=LATENCY_BUCKETS)
THROUGHPUT = Gauge("rglcd_images_per_second", "images per second of the last batch")


def record_batch(size: int, seconds: float) -> None:
    IMAGES.inc(size)
    BATCH_SIZE.observe(size)
    BATCH_SECONDS.observe(seconds)
    THROUGHPUT.set(size / seconds if seconds > 0 else 0.0)
