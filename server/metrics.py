"""Prometheus metrics, one registry per app (so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.rounds = Counter(
            "fedbpt_rounds_closed_total", "Rounds closed, by reason", ["reason"], registry=self.registry
        )
        self.reports = Counter(
            "fedbpt_reports_total",
            "Reports received, by outcome (accepted, duplicate, rejected_<reason>)",
            ["outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "fedbpt_request_seconds", "Request latency", ["method", "route", "status"], registry=self.registry
        )
        self.epsilon = Gauge(
            "fedbpt_privacy_epsilon",
            "Privacy spent per party so far (epsilon at the job's delta), by job; only private jobs",
            ["job"],
            registry=self.registry,
        )
