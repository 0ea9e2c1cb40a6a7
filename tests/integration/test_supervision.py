"""The supervisor as ``make dev`` and the whole-stack tests use it: crashes are reported and
restarted, a crash loop stops it with the reason, a stop asked for is not a crash."""

from __future__ import annotations

import dataclasses
import subprocess

import anyio
import psutil
import pytest

from emulator.processes import RestartPolicy, ServiceSpec, Supervisor, describe_exit
from tests.conftest import PYTHON, REPO, subprocess_env

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

QUICK = RestartPolicy(max_restarts=3, window_s=60, initial_backoff_s=0.05, max_backoff_s=0.2)


def flaky(name: str, after_s: float, code: int) -> ServiceSpec:
    return ServiceSpec(name, "tests.flaky", {}, (str(after_s), str(code)))


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def __call__(self, name: str, message: str) -> None:
        self.seen.append((name, message))

    def messages(self, name: str) -> list[str]:
        return [message for who, message in self.seen if who == name]


async def test_a_killed_process_is_reported_and_restarted() -> None:
    events = Events()
    async with Supervisor(on_event=events, restart=QUICK) as supervisor:
        first = await supervisor.start(flaky("worker", -1, 0))
        await supervisor.kill("worker")
        await supervisor.wait_restarted("worker", first, within_s=20)
        second = supervisor.processes["worker"]
        assert second.process.pid != first.process.pid
        assert second.returncode is None
        assert not supervisor.failed.is_set()
        # One log across restarts: the first process's lines are still there.
        assert list(second.lines).count("flaky ready") == 2
    assert events.messages("worker")[0].startswith(
        "exited unexpectedly (killed by SIGKILL); restarting in 0.05s"
    )
    assert "restarted and ready" in events.messages("worker")


async def test_a_crash_loop_stops_with_the_reason() -> None:
    events = Events()
    async with Supervisor(on_event=events, restart=QUICK) as supervisor:
        await supervisor.start(flaky("crasher", 0.2, 3))
        with anyio.fail_after(30):
            await supervisor.failed.wait()
        assert supervisor.failure == "crasher keeps crashing: exit code 3, after 3 restarts in 60s"
    last = events.messages("crasher")[-1]
    assert last == "exited unexpectedly (exit code 3); giving up: crash loop"


async def test_a_stop_asked_for_is_not_a_crash() -> None:
    events = Events()
    async with Supervisor(on_event=events, restart=QUICK) as supervisor:
        await supervisor.start(flaky("worker", -1, 0))
        assert await supervisor.stop("worker") == -15  # SIGTERM: the stand-in has no handler
        await anyio.sleep(0.5)  # a restart would be under way by now
        assert supervisor.processes["worker"].returncode is not None
    assert events.seen == []


async def test_a_first_start_that_fails_is_the_callers_error_not_a_restart() -> None:
    events = Events()
    async with Supervisor(on_event=events, restart=QUICK) as supervisor:
        with pytest.raises(RuntimeError, match="exited before it was ready"):
            await supervisor.start(
                ServiceSpec("broken", "tests.flaky", {}, ("not-a-number", "0")),
                ready_within_s=20,
            )
        await anyio.sleep(0.5)
        assert len([p for p in supervisor.processes.values()]) == 1
        assert not supervisor.failed.is_set()
    assert events.messages("broken") == ["exited unexpectedly (exit code 1)"]


async def test_ready_url_must_answer_while_the_process_lives() -> None:
    """A "ready" line is not enough when the spec names a URL: nothing answers there."""
    spec = ServiceSpec(
        "liar", "tests.flaky", {}, ("-1", "0"), ready_url="http://127.0.0.1:9/readyz"
    )
    async with Supervisor() as supervisor:
        with pytest.raises(RuntimeError, match="liar was not ready within 2s"):
            await supervisor.start(spec, ready_within_s=2)


async def test_a_process_waiting_for_something_outside_counts_as_started() -> None:
    """An infer worker whose model has no version yet is up (its crash is restarted), not
    ready; without the pattern, the same process would fail to start in time."""
    waiting = ServiceSpec(
        "patient",
        "tests.flaky",
        {},
        ("-1", "0", "waiting for a deployed version of the model"),
        started_pattern="waiting for a deployed version",
    )
    events = Events()
    async with Supervisor(on_event=events, restart=QUICK) as supervisor:
        first = await supervisor.start(waiting, ready_within_s=20)
        assert first.waiting == "waiting for a deployed version of the model"
        assert not first.ready.is_set()
        await supervisor.kill("patient")
        with anyio.fail_after(20):
            while supervisor.processes["patient"] is first or not events.messages("patient")[1:]:
                await anyio.sleep(0.05)
        assert events.messages("patient")[-1] == "restarted, waiting"
        strict = dataclasses.replace(waiting, name="strict", started_pattern=None)
        with pytest.raises(RuntimeError, match="strict was not ready within 1s"):
            await supervisor.start(strict, ready_within_s=1)


SUPERVISE_ONE = """
import anyio
from emulator.processes import ServiceSpec, Supervisor

async def main():
    async with Supervisor() as supervisor:
        child = await supervisor.start(ServiceSpec("orphan", "tests.flaky", {}, ("-1", "0")))
        print(child.process.pid, flush=True)
        await anyio.sleep(60)

anyio.run(main)
"""


def test_a_supervised_process_dies_with_a_killed_supervisor() -> None:
    """A SIGKILLed `make dev` cannot stop its services: they must stop themselves."""
    supervisor = subprocess.Popen(
        [PYTHON, "-c", SUPERVISE_ONE],
        env=subprocess_env({}),
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert supervisor.stdout is not None
        child = psutil.Process(int(supervisor.stdout.readline()))
        assert child.is_running()
    finally:
        supervisor.kill()
        supervisor.wait(timeout=10)
        if supervisor.stdout is not None:
            supervisor.stdout.close()
    try:
        child.wait(timeout=10)
    except psutil.TimeoutExpired:
        child.kill()
        raise AssertionError("the child outlived its SIGKILLed supervisor") from None


def test_exits_are_described_for_people() -> None:
    assert describe_exit(0) == "exit code 0"
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(None) == "still running"
