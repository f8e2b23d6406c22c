"""Prometheus metrics, one registry per app instance."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("fsdi_requests_total", "HTTP requests by route and status",
                                ["method", "route", "status"], registry=r)
        self.latency = Histogram("fsdi_request_seconds", "HTTP request latency by route",
                                 ["route"], registry=r)
        self.classify_latency = Histogram(
            "fsdi_classify_seconds", "End-to-end /classify latency", registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.images_classified = Counter("fsdi_images_classified_total",
                                         "Images classified", ["group"], registry=r)
        self.unknown = Counter("fsdi_unknown_total", "Images rejected as unknown",
                               ["group"], registry=r)
        self.verdicts = Counter("fsdi_verdicts_total",
                                "OK/NG verdicts in groups with good images",
                                ["group", "verdict"], registry=r)
        self.enrolled = Counter("fsdi_images_enrolled_total", "Support images enrolled",
                                registry=r)
        self.batch_size = Histogram("fsdi_batch_size", "Images per forward pass", registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32, 64))
        self.queue_depth = Gauge("fsdi_queue_images", "Images waiting for inference",
                                 registry=r)
        self.push = Counter("fsdi_push_total", "Result pushes by channel and outcome",
                            ["channel", "outcome"], registry=r)
        self.feedback = Counter("fsdi_feedback_total", "Operator verdicts", ["correct"],
                                registry=r)
        self.not_kept = Counter(
            "fsdi_query_images_not_kept_total",
            "Classified images the query-image store refused (disk full, I/O error, object "
            "store unreachable)", registry=r)
        self.auth_refusals = Counter(
            "fsdi_auth_refusals_total", "Requests refused to a valid key: its role "
            "(reason=role) or its groups (reason=scope); OPC UA sessions refused (reason=opcua)",
            ["reason"], registry=r)
        self.dependency_up = Gauge(
            "fsdi_dependency_up", "1 when the dependency answered its last check, else 0",
            ["dependency"], registry=r)
        self.classes = Gauge("fsdi_classes_cached", "Classes in the prototype cache",
                             registry=r)
