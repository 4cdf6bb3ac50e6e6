"""Prometheus metrics, computed from the database at scrape time.

The database is the record, so the counters are counts of rows (they survive restarts and
cover every worker process, not only this one). Inference latency is ``completed_at -
received_at`` of each scored instance: queueing plus decoding plus the forward pass.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session

from ichnode import __version__
from ichnode.db import metrics as counts
from ichnode.db.models import DeliveryStatus, InstanceStatus, StudyStatus
from ichnode.review import agreement
from ichnode.web.context import WebContext

log = logging.getLogger(__name__)

#: Upper bounds (seconds) of the inference latency histogram buckets.
LATENCY_BUCKETS: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class DatabaseCollector(Collector):
    """Collects the node's metrics from its database (and its in-process workers)."""

    def __init__(self, context: WebContext) -> None:
        self.context = context

    def collect(self) -> Iterator[Any]:
        yield build_info(self.context)
        with self.context.sessions() as session:
            yield from self._instances(session)
            yield from self._latency(session)
            yield from self._studies(session)
            yield from self._deliveries(session)
            yield from self._reviews(session)
        workers = GaugeMetricFamily(
            "ichnode_workers_alive", "In-process worker threads of this node that are running."
        )
        workers.add_metric([], sum(t.is_alive() for t in worker_threads(self.context)))
        yield workers

    def _instances(self, session: Session) -> Iterator[Any]:
        by_status = counts.instances_by_status(session)
        received = CounterMetricFamily(
            "ichnode_instances_received", "SOP instances received and stored."
        )
        received.add_metric([], sum(by_status.values()))
        yield received
        outcome = CounterMetricFamily(
            "ichnode_instances",
            "Received instances by outcome: scored, skipped (not head CT) or failed.",
            labels=["outcome"],
        )
        for name, status in (
            ("scored", InstanceStatus.DONE),
            ("skipped", InstanceStatus.SKIPPED),
            ("failed", InstanceStatus.FAILED),
        ):
            outcome.add_metric([name], by_status.get(status.value, 0))
        yield outcome
        depth = GaugeMetricFamily(
            "ichnode_queue_depth", "Instances waiting to be scored.", labels=["status"]
        )
        for status in (InstanceStatus.QUEUED, InstanceStatus.CLAIMED):
            depth.add_metric([status.value], by_status.get(status.value, 0))
        yield depth

    def _latency(self, session: Session) -> Iterator[Any]:
        count, total, within = counts.latency(session, LATENCY_BUCKETS)
        buckets = [(f"{b:g}", n) for b, n in zip(LATENCY_BUCKETS, within, strict=True)]
        buckets.append(("+Inf", count))
        hist = HistogramMetricFamily(
            "ichnode_inference_latency_seconds",
            "Seconds from receiving an instance to storing its prediction.",
        )
        hist.add_metric([], buckets, sum_value=total)
        yield hist

    def _studies(self, session: Session) -> Iterator[Any]:
        studies = GaugeMetricFamily("ichnode_studies", "Studies by status.", labels=["status"])
        by_status = counts.studies_by_status(session)
        for status in StudyStatus:
            studies.add_metric([status.value], by_status.get(status.value, 0))
        yield studies
        results = CounterMetricFamily(
            "ichnode_study_results",
            "Study results written (every version), by whether they were flagged.",
            labels=["flagged"],
        )
        flagged = counts.results_by_flag(session)
        results.add_metric(["true"], int(flagged.get(True, 0)))
        results.add_metric(["false"], int(flagged.get(False, 0)))
        yield results

    def _deliveries(self, session: Session) -> Iterator[Any]:
        by_status = counts.deliveries_by_status(session)
        deliveries = CounterMetricFamily(
            "ichnode_deliveries",
            "Report objects to deliver, by state (sent, failed for good, pending).",
            labels=["status"],
        )
        for status in DeliveryStatus:
            deliveries.add_metric([status.value], by_status.get(status.value, 0))
        yield deliveries
        attempts = CounterMetricFamily(
            "ichnode_delivery_attempts", "C-STORE attempts made to deliver report objects."
        )
        attempts.add_metric([], counts.delivery_attempts(session))
        yield attempts
        by_status = counts.notifications_by_status(session)
        notifications = CounterMetricFamily(
            "ichnode_notifications",
            "Result notifications (HL7 v2, FHIR) to deliver, by state.",
            labels=["status"],
        )
        for status in DeliveryStatus:
            notifications.add_metric([status.value], by_status.get(status.value, 0))
        yield notifications

    def _reviews(self, session: Session) -> Iterator[Any]:
        """The radiologists' agreement with the model (:func:`ichnode.review.agreement`)."""
        rows = agreement(session)
        labels = ["model_id", "month"]
        flagged = GaugeMetricFamily(
            "ichnode_review_flagged_studies",
            "Reviewed flagged studies by their latest verdict, per model id and month.",
            labels=[*labels, "verdict"],
        )
        reviewed = GaugeMetricFamily(
            "ichnode_reviewed_studies",
            "Reviewed studies by outcome against the review (tp, fp, tn, fn).",
            labels=[*labels, "outcome"],
        )
        shares = {
            name: GaugeMetricFamily(
                f"ichnode_review_{name}",
                f"The model's {name} against the reviews, per model id and month.",
                labels=labels,
            )
            for name in ("sensitivity", "specificity")
        }
        for row in rows:
            key = [row.model_id, row.month]
            flagged.add_metric([*key, "confirmed"], row.confirmed)
            flagged.add_metric([*key, "rejected"], row.rejected)
            for outcome, n in (("tp", row.true_positive), ("fp", row.false_positive),
                               ("tn", row.true_negative), ("fn", row.false_negative)):  # fmt: skip
                reviewed.add_metric([*key, outcome], n)
            for name, family in shares.items():
                value = getattr(row, name)
                if value is not None:
                    family.add_metric(key, value)
        yield flagged
        yield reviewed
        yield from shares.values()


def build_info(context: WebContext) -> InfoMetricFamily:
    """``ichnode_build_info{version, model_id} 1``: what is running (model_id "" without one)."""
    predictor = context.predictor
    info = InfoMetricFamily("ichnode_build", "The running ichnode version and its model.")
    info.add_metric(
        [], {"version": __version__, "model_id": predictor.model_id if predictor else ""}
    )
    return info


def worker_threads(context: WebContext) -> list[Any]:
    """The node's in-process worker threads (named ``worker-N`` by the node)."""
    return [t for t in context.threads if t.name.startswith("worker")]


def render_metrics(context: WebContext) -> bytes:
    """The Prometheus text exposition of the node's metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(context))
    return generate_latest(registry)
