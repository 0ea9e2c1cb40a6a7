"""What persist measures.

    conveyor_job_end_to_end_duration_seconds{model,outcome}
                                                   end to end: from the job's acceptance
                                                   (``jobs.created_at``) to its final state,
                                                   recorded by persist (succeeded, failed)
    conveyor_persist_results_total{outcome}        results recorded (new), found already
                                                   recorded (duplicate: a redelivery), or
                                                   dropped for a cancelled job (discarded)

``model`` is a model of the stack's topology, or ``other`` for a name it does not serve (a
stray producer must not mint label values).
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from shared.metrics import LATENCY_BUCKETS

__all__ = ["JOB_DURATION", "RESULTS"]

JOB_DURATION = Histogram(
    "conveyor_job_end_to_end_duration_seconds",
    "Jobs from acceptance (ingest) to their final state (recorded by persist)",
    ["model", "outcome"],
    buckets=LATENCY_BUCKETS,
)
RESULTS = Counter(
    "conveyor_persist_results",
    "Results persist handled, by outcome (new, duplicate, discarded)",
    ["outcome"],
)
