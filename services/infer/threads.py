"""How many threads torch may use: the CPUs this process may really run on.

torch sizes its intra-op pool from the machine's cores. In a container with a CPU quota (a
Kubernetes limit of 2 CPUs on a 64-core node) that is 64 threads competing for 2 CPUs, and
on a shared machine (``make dev``: four services and the emulator on a few cores) threads
that spin while others wait: FACTS measured the same model at 198 texts/s with 2 threads and
359 with 1 while another process kept one core busy. So the default is the smaller of the
process's CPU affinity and its cgroup quota (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_*``),
rounded up, and ``INFER_TORCH_THREADS`` overrides it.

On a machine shared with the rest of the pipeline, :class:`ThreadShare` lowers that count per
batch to the model's share of the work (``INFER_SHARED_JOB_COST``).
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ThreadShare",
    "available_cpus",
    "cgroup_cpu_quota",
    "configure_torch_threads",
    "use_torch_threads",
]

_CGROUP = Path("/sys/fs/cgroup")


def cgroup_cpu_quota(root: Path = _CGROUP) -> float | None:
    """CPUs the cgroup may use (``2.5`` for 250000/100000), or None when unlimited/unknown."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]  # v2: "max 100000"
        if quota == "max":
            return None
        return int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def available_cpus(root: Path = _CGROUP) -> int:
    """The CPUs this process may run on: its affinity, capped by its cgroup's quota."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    count = cpus or 1
    quota = cgroup_cpu_quota(root)
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return count


def configure_torch_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (``threads``, else :func:`available_cpus`); one inter-op
    thread, since one model call runs at a time. Returns the count set."""
    import torch

    count = threads or available_cpus()
    torch.set_num_threads(count)
    with contextlib.suppress(RuntimeError):  # possible only before torch's first parallel work
        torch.set_num_interop_threads(1)
    return count


@dataclass(frozen=True)
class ThreadShare:
    """torch's threads for one batch, on CPUs shared with the rest of the pipeline.

    Per job, the model's work grows with the job's texts while the other services' and the
    emulator's (HTTP, SQS calls, PostgreSQL, the webhook) stays nearly the same. ``job_cost``
    is that other work in texts of model work; torch gets the model's share of the CPUs,
    rounded up. On 2 cores with a cost of 2 texts (``make dev``): 1 thread for 1-text jobs,
    whose other work keeps the second core busy, and 2 for 32-text jobs, where the model is
    nearly all the work (benchmarks/pipeline.py on 2 cores: 1-text jobs 137 jobs/s with 1
    thread, 108 with 2; 32-text jobs 8.6 jobs/s with 1, 11.7 with 2).
    """

    cpus: int
    job_cost: float

    def threads(self, texts: int, jobs: int) -> int:
        if self.job_cost <= 0 or texts <= 0 or jobs <= 0:
            return self.cpus
        share = texts / (texts + jobs * self.job_cost)
        return max(1, min(self.cpus, math.ceil(self.cpus * share)))


_set_here = threading.local()


def use_torch_threads(count: int) -> None:
    """torch's intra-op threads for the calling thread's next model calls.

    OpenMP and MKL keep the count per calling thread, and the model runs on any of anyio's
    worker threads: each sets its own, once per change.
    """
    if getattr(_set_here, "count", None) == count:
        return
    import torch

    torch.set_num_threads(count)
    _set_here.count = count
