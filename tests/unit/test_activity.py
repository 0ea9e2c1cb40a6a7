"""One activity line per interval, with the counts of that interval, and none while idle."""

from __future__ import annotations

import anyio
import pytest
import structlog
from structlog.testing import capture_logs

from services.ingest import deployed as deployed_module
from services.ingest.deployed import DeployedModels
from shared.activity import Activity
from shared.errors import AwsUnavailable
from tests.timeouts import only_the_first_waits

pytestmark = pytest.mark.anyio


async def test_each_interval_logs_its_own_counts_once_and_idle_ones_nothing() -> None:
    totals = {"received": 0}  # a source keeping running totals, as a consumer's stats do
    activity = Activity(structlog.get_logger("test"), interval_s=0.05, names=("ok", "failed"))
    activity.watch(lambda: dict(totals))
    with capture_logs() as logs, anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(activity.run)
            for _ in range(3):
                activity.count("ok")
            totals["received"] = 3
            await anyio.sleep(0.3)  # one line, then idle intervals: nothing
            activity.count("failed")
            await anyio.sleep(0.3)
            activity.count("ok")
            tg.cancel_scope.cancel()  # stopping reports the last interval too
    lines = [entry for entry in logs if entry["event"] == "activity"]
    assert [(e["ok"], e["failed"], e["received"]) for e in lines] == [
        (3, 0, 3),
        (0, 1, 0),
        (1, 0, 0),
    ]
    assert {e["log_level"] for e in lines} == {"info"}
    assert activity.totals() == {"ok": 4, "failed": 1, "received": 3}


async def test_deployment_is_cached_and_a_failed_lookup_keeps_the_last_answer() -> None:
    answers: dict[str, bool | Exception] = {"m": False, "down": AwsUnavailable("no answer")}
    calls: list[str] = []

    async def lookup(model: str) -> bool:
        calls.append(model)
        answer = answers[model]
        if isinstance(answer, Exception):
            raise answer
        return answer

    deployed = DeployedModels(lookup, cache_s=0.2)
    with capture_logs() as logs:
        assert not await deployed.deployed("m")
        assert not await deployed.deployed("m")  # from the cache
        assert calls == ["m"]
        answers["m"] = True  # pushed
        await anyio.sleep(0.25)
        assert await deployed.deployed("m")
        assert calls == ["m", "m"]
        answers["m"] = AwsUnavailable("S3 away")
        await anyio.sleep(0.25)
        assert await deployed.deployed("m")  # the last answer, not a refusal
        assert await deployed.deployed("down")  # never known: not refused either
    warned = [e for e in logs if e["log_level"] == "warning" and "no deployed" in e["event"]]
    assert [e["model"] for e in warned] == ["m"]  # once, not per request
    assert "conveyor models push <dir> --name m" in warned[0]["fix"]
    assert await DeployedModels(None).deployed("anything")


async def test_a_lookup_that_times_out_is_not_retried_by_every_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """S3 not answering: one request waits out the timeout; the ones after it get the last
    answer at once until RETRY_AFTER_FAILURE_S has passed (they used to wait too, each time
    the short-lived answer expired)."""
    monkeypatch.setattr(deployed_module, "LOOKUP_TIMEOUT_S", 0.2)
    monkeypatch.setattr(deployed_module, "RETRY_AFTER_FAILURE_S", 1.0)
    calls: list[str] = []
    answering = True

    async def lookup(model: str) -> bool:
        calls.append(model)
        if not answering:
            await anyio.sleep(10)
        return False

    deployed = DeployedModels(lookup, cache_s=0.01)
    assert not await deployed.deployed("m")
    answering = False
    await anyio.sleep(0.05)
    answers = await only_the_first_waits(lambda: deployed.deployed("m"), 0.2)
    assert not any(answers)  # the last answer
    assert len(calls) == 2
    await anyio.sleep(1.0)
    answering = True
    assert not await deployed.deployed("m")
    assert len(calls) == 3
