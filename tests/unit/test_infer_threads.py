"""torch's thread count follows the CPUs the process may really use (affinity, cgroup quota)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import ClassVar

import anyio
import pytest
import torch

from services.infer.runner import ModelRunner
from services.infer.threads import ThreadShare, available_cpus, cgroup_cpu_quota
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


def test_the_model_gets_its_share_of_shared_cpus() -> None:
    two = ThreadShare(cpus=2, job_cost=2)
    assert two.threads(texts=30, jobs=30) == 1  # 1-text jobs: the rest needs the other core
    assert two.threads(texts=64, jobs=2) == 2  # 32-text jobs: nearly all model work
    assert two.threads(texts=2, jobs=1) == 1  # half the work: half the CPUs
    assert two.threads(texts=3, jobs=1) == 2  # more than half: rounded up
    sixteen = ThreadShare(cpus=16, job_cost=2)
    assert sixteen.threads(texts=30, jobs=30) == 6  # a third of 16, rounded up
    assert sixteen.threads(texts=256, jobs=1) == 16
    alone = ThreadShare(cpus=4, job_cost=0)  # infer has its CPUs to itself
    assert alone.threads(texts=1, jobs=1) == 4


class ThreadCount:
    """A model handler that answers with the torch threads its call ran with."""

    kind: ClassVar[str] = "thread-count"

    def cost(self, text: str) -> int:
        return 1

    def predict(self, inputs: list[str]) -> list[list[float]]:
        return [[float(torch.get_num_threads())] for _ in inputs]


@pytest.mark.anyio
async def test_each_batch_runs_with_its_share_of_threads() -> None:
    runner = ModelRunner(
        ThreadCount(),
        max_batch_items=64,
        max_batch_tokens=1000,
        max_batch_wait_s=0.2,
        thread_share=ThreadShare(cpus=2, job_cost=2),
    )
    before = torch.get_num_threads()
    seen: dict[str, float] = {}

    async def one(name: str, texts: int) -> None:
        matrix = await runner.run(runner.job(uuid.uuid4(), [name] * texts))
        seen[name] = float(matrix[0][0])

    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                runner.start(tg)
                async with anyio.create_task_group() as jobs:  # one batch of 1-text jobs
                    for i in range(8):
                        jobs.start_soon(one, f"short {i}", 1)
                await one("long", 32)  # a batch of its own
                tg.cancel_scope.cancel()
    finally:
        torch.set_num_threads(before)
    assert runner.stats.model_calls == 2
    assert {seen[f"short {i}"] for i in range(8)} == {1.0}
    assert seen["long"] == 2.0
