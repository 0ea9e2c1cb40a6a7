"""What infer measures, per model (one worker serves one model; the label keeps a fleet's
figures apart once Prometheus gathers them).

    conveyor_infer_model_calls_total{model}         model calls (a batch is split into calls of
                                                    at most INFER_MAX_BATCH_ITEMS inputs)
    conveyor_infer_batch_items{model}               inputs per model call (histogram)
    conveyor_infer_batch_jobs{model}                jobs (messages) sharing one batch
    conveyor_infer_batch_tokens{model}              tokens (the handler's cost) per batch
    conveyor_infer_model_call_duration_seconds{model}
    conveyor_infer_isolated_failures_total{model}   failed batches re-run job by job
    conveyor_infer_jobs_total{model,outcome}        succeeded, failed (the model refused it),
                                                    refused (over the input limits)
    conveyor_infer_model_load_seconds{model}        loading the verified files onto the device
    conveyor_infer_model_info{model,version,kind,device}   1 for the version being served
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "BATCH_ITEMS",
    "BATCH_JOBS",
    "BATCH_TOKENS",
    "ISOLATED",
    "JOBS",
    "MODEL_CALLS",
    "MODEL_CALL_DURATION",
    "MODEL_INFO",
    "MODEL_LOAD",
]

MODEL_CALLS = Counter("conveyor_infer_model_calls", "Model calls (batches) made", ["model"])
BATCH_ITEMS = Histogram(
    "conveyor_infer_batch_items",
    "Inputs per model call",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
BATCH_JOBS = Histogram(
    "conveyor_infer_batch_jobs",
    "Jobs (SQS messages) sharing one batch",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
BATCH_TOKENS = Histogram(
    "conveyor_infer_batch_tokens",
    "Tokens (as the model's handler counts them) per batch",
    ["model"],
    buckets=(16, 64, 256, 512, 1024, 2048, 4096, 8192, 16384, 65536),
)
MODEL_CALL_DURATION = Histogram(
    "conveyor_infer_model_call_duration_seconds",
    "Time one model call took in its worker thread",
    ["model"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
ISOLATED = Counter(
    "conveyor_infer_isolated_failures",
    "Model calls that failed and were re-run job by job to find the failing job",
    ["model"],
)
JOBS = Counter(
    "conveyor_infer_jobs",
    "Jobs infer finished, by outcome (succeeded, failed, refused)",
    ["model", "outcome"],
)
MODEL_LOAD = Gauge(
    "conveyor_infer_model_load_seconds",
    "Seconds the served model took to load onto its device",
    ["model"],
)
MODEL_INFO = Gauge(
    "conveyor_infer_model_info",
    "The model version this worker serves (always 1; the labels say which)",
    ["model", "version", "kind", "device"],
)
