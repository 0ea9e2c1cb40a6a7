"""How many threads torch may use: the CPUs this process may really run on.

torch sizes its intra-op pool from the machine's cores. In a container with a CPU quota (a
Kubernetes limit of 2 CPUs on a 64-core node) that is 64 threads competing for 2 CPUs, and
on a shared machine (``make dev``: four services and the emulator on a few cores) threads
that spin while others wait: FACTS measured the same model at 198 texts/s with 2 threads and
359 with 1 while another process kept one core busy. So the default is the smaller of the
process's CPU affinity and its cgroup quota (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_*``),
rounded up, and ``INFER_TORCH_THREADS`` overrides it.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

__all__ = ["available_cpus", "cgroup_cpu_quota", "configure_torch_threads"]

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
