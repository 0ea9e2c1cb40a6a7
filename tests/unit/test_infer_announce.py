"""infer announces a job as running only when it runs long enough for that to show."""

import anyio
import pytest

from services.infer.announce import announced

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
