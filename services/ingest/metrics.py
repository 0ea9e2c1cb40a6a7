"""What ingest measures.

    conveyor_jobs_accepted_total{model}     jobs recorded (202); an Idempotency-Key replay is
                                            not a new job and is not counted
    conveyor_jobs_refused_total{reason}     POST /v1/jobs answered with an error: not_deployed
                                            (409), backlog (429), unavailable (503),
                                            in_progress (409, same Idempotency-Key),
                                            key_reused (422, same key, other body), invalid
                                            (422), bad_request (400), unauthorized (401),
                                            too_large (413), error (500), other
    conveyor_outbox_relayed_total{outcome}  outbox rows the relay sent, or failed to send
                                            (they stay for a later pass)

A refusal has no ``model`` label: before validation the model is whatever the client wrote.
"""

from __future__ import annotations

from prometheus_client import Counter

__all__ = ["JOBS_ACCEPTED", "JOBS_REFUSED", "OUTBOX_RELAYED"]

JOBS_ACCEPTED = Counter("conveyor_jobs_accepted", "Jobs accepted by POST /v1/jobs (202)", ["model"])
JOBS_REFUSED = Counter(
    "conveyor_jobs_refused", "Submissions POST /v1/jobs refused, by reason", ["reason"]
)
OUTBOX_RELAYED = Counter(
    "conveyor_outbox_relayed",
    "Outbox rows the relay sent to SQS (sent) or could not send yet (failed)",
    ["outcome"],
)
