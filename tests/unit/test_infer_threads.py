"""torch's thread count follows the CPUs the process may really use (affinity, cgroup quota)."""

from __future__ import annotations

import os
from pathlib import Path

from services.infer.threads import available_cpus, cgroup_cpu_quota
from tests.conftest import run_python


def test_cgroup_v2_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("250000 100000\n")
    assert cgroup_cpu_quota(tmp_path) == 2.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(tmp_path) is None


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(tmp_path) == 0.5
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_quota(tmp_path) is None


def test_a_quota_below_the_affinity_wins(tmp_path: Path) -> None:
    cores = len(os.sched_getaffinity(0))
    assert available_cpus(tmp_path) == cores  # no cgroup files: the affinity
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a CPU rounds up to one
    assert available_cpus(tmp_path) == 1
    (tmp_path / "cpu.max").write_text(f"{(cores + 8) * 100000} 100000\n")
    assert available_cpus(tmp_path) == cores  # a quota above the affinity changes nothing


def test_the_affinity_is_honoured_in_a_real_process() -> None:
    """Pinned to one CPU (as a container's cpuset would), torch is given one thread."""
    code = (
        "import os, torch; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
        "from services.infer.threads import configure_torch_threads; "
        "print(configure_torch_threads(None), torch.get_num_threads())"
    )
    result = run_python(code, timeout=120, check=True)
    assert result.stdout.split() == ["1", "1"]
