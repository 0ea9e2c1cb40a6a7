"""infer announces a job as running only when it runs long enough for that to show."""

import time
import uuid
from typing import ClassVar

import anyio
import pytest

from services.infer.announce import announced
from services.infer.runner import ModelRunner

pytestmark = pytest.mark.anyio


class Record:
    def __init__(self) -> None:
        self.events: list[str] = []

    async def announce(self) -> None:
        self.events.append("announced")

    def work(self, seconds: float, value: int = 7):  # type: ignore[no-untyped-def]
        async def run() -> int:
            self.events.append("started")
            await anyio.sleep(seconds)
            self.events.append("finished")
            return value

        return run


async def test_a_quick_job_is_never_announced() -> None:
    record = Record()
    with anyio.fail_after(5):
        assert await announced(record.work(0.01), record.announce, after_s=0.5) == 7
        await anyio.sleep(0.6)  # past the delay: nothing was left scheduled
    assert record.events == ["started", "finished"]


async def test_a_long_job_is_announced_once_while_it_runs() -> None:
    record = Record()
    with anyio.fail_after(5):
        assert await announced(record.work(0.3, 9), record.announce, after_s=0.05) == 9
    assert record.events == ["started", "announced", "finished"]


async def test_zero_announces_every_job_before_it_runs() -> None:
    record = Record()
    with anyio.fail_after(5):
        await announced(record.work(0.0), record.announce, after_s=0)
    assert record.events == ["announced", "started", "finished"]


async def test_a_failing_job_raises_and_cancels_its_announcement() -> None:
    record = Record()

    async def failing() -> int:
        await anyio.sleep(0.01)
        raise ValueError("the model refused")

    with anyio.fail_after(5), pytest.raises(ValueError, match="refused"):
        await announced(failing, record.announce, after_s=0.1)
    await anyio.sleep(0.2)
    assert record.events == []


async def test_a_failed_announcement_does_not_fail_the_job() -> None:
    record = Record()

    async def broken() -> None:
        raise ConnectionError("SQS is away")

    with anyio.fail_after(5):
        assert await announced(record.work(0.2, 3), broken, after_s=0.05) == 3
    assert record.events == ["started", "finished"]


async def test_the_clock_starts_when_the_job_reaches_the_model() -> None:
    """A job that waits 0.3 s for its batch's turn, then runs 0.1 s, is not announced at 0.2
    s: waiting is not running."""
    record = Record()
    on_model = anyio.Event()

    async def waits_then_runs() -> int:
        await anyio.sleep(0.3)
        on_model.set()
        return await record.work(0.1)()

    with anyio.fail_after(5):
        await announced(waits_then_runs, record.announce, after_s=0.2, running=on_model)
    assert record.events == ["started", "finished"]


async def test_a_job_long_on_the_model_is_announced_after_its_start() -> None:
    record = Record()
    on_model = anyio.Event()
    announced_at: list[float] = []

    async def announce() -> None:
        announced_at.append(anyio.current_time())
        await record.announce()

    async def waits_then_runs() -> int:
        await anyio.sleep(0.2)
        on_model.set()
        return await record.work(0.4)()

    began = anyio.current_time()
    with anyio.fail_after(5):
        await announced(waits_then_runs, announce, after_s=0.1, running=on_model)
    assert record.events == ["started", "announced", "finished"]
    assert announced_at[0] - began >= 0.3  # 0.2 waiting + 0.1 on the model


class SlowEcho:
    """A model handler whose every call takes 0.2 s."""

    kind: ClassVar[str] = "slow-echo"

    def cost(self, text: str) -> int:
        return 1

    def predict(self, inputs: list[str]) -> list[list[float]]:
        time.sleep(0.2)
        return [[1.0] for _ in inputs]


async def test_a_job_is_on_the_model_when_its_batch_is_called_not_before() -> None:
    runner = ModelRunner(
        SlowEcho(), max_batch_items=1, max_batch_tokens=100, max_batch_wait_s=0, model="slow"
    )
    on_model: dict[str, float] = {}

    async def one(name: str) -> None:
        def reached() -> None:
            on_model[name] = anyio.current_time()

        await runner.run(runner.job(uuid.uuid4(), [name], reached))

    began = anyio.current_time()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            runner.start(tg)
            async with anyio.create_task_group() as jobs:
                jobs.start_soon(one, "a")
                jobs.start_soon(one, "b")
            tg.cancel_scope.cancel()
    first, second = sorted(on_model.values())
    assert first - began < 0.15
    assert second - first >= 0.18  # the second waited for the first's call to end
