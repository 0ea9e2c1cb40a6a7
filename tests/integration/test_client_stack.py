"""The client library and ``conveyor submit --file`` against the whole stack: every service a
real process on the emulator (DevStack), serving the tiny test model.

- ``Client.map`` over 50 texts: outputs in input order, equal to the model run here directly;
- ``python -m conveyor submit --file`` on 1,000 lines, sent SIGINT half way, then run again:
  every line has exactly one result, the tenant has exactly 1,000 jobs (none twice), and the
  second run submitted exactly the lines the first had not (and re-attached the jobs the first
  had submitted but not written).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import numpy as np
import pytest
import torch

from conveyor import Client
from emulator import Stack
from emulator.devstack import DevOptions, DevStack
from emulator.harness import add_topology
from emulator.seed import push
from emulator.stackfile import write_env_file
from shared.apikeys import create_key
from shared.topology import Topology
from tests.conftest import PYTHON, REPO, subprocess_env
from tests.models import TINY_KIND, TinyEmbedding, make_tiny_model

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(600)]

TINY = "tiny"
TENANT = "bulk"
"""The stack's own tenant; the bulk run has one of its own, so that its jobs are all its."""
BULK_TENANT = "bulk-cli"
LINES = 1000
INTERRUPT_AT = LINES // 2
SUMMARY = re.compile(
    r"(?P<head>done|interrupted|stopped): (?P<lines>\d+) lines: (?P<already>\d+) already in "
    r".*?, (?P<written>\d+) written in [\d.]+ s; jobs: (?P<submitted>\d+) submitted, "
    r"(?P<reattached>\d+) re-attached; lines: (?P<succeeded>\d+) succeeded, (?P<failed>\d+) failed"
)


@dataclass
class Running:
    dev: DevStack
    model: TinyEmbedding

    def expected(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self.model.predict(texts), dtype=np.float32)

    async def jobs(self, tenant: str) -> int:
        conn = await asyncpg.connect(self.dev.stack.database_url)
        try:
            count: int = await conn.fetchval(
                "SELECT count(*) FROM jobs WHERE tenant_id = $1", tenant
            )
        finally:
            await conn.close()
        return count

    async def env_file(self, path: Path, tenant: str) -> Path:
        """A stack file like ``make dev``'s, with a key of ``tenant``'s."""
        conn = await asyncpg.connect(self.dev.stack.database_url)
        try:
            key, _ = await create_key(conn, tenant, "test_client_stack")
        finally:
            await conn.close()
        write_env_file(path, {**self.dev.environment(), "CONVEYOR_API_KEY": key})
        return path


@pytest.fixture(scope="module")
async def running(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    bstack = await add_topology(stack, Topology(prefix="bulkcli", models=(TINY,)), seed=False)
    tiny_dir = make_tiny_model(tmp_path_factory.mktemp("tiny"))
    await push(bstack.admin, bstack.topology, tiny_dir, name=TINY, version="1", kind=TINY_KIND)
    fast = {"SQS_WAIT_S": "1", "SHUTDOWN_GRACE_S": "5", "LOG_LEVEL": "info"}
    extra = {
        # The tiny model is the stack's first (and only) model: its worker is "infer".
        "infer": {**fast, "INFER_HANDLER_MODULES": "tests.models"},
        "ingest": fast,
        "persist": fast,
        "notify": fast,
    }
    options = DevOptions(http_port=0, extra=extra, tenant=TENANT)
    async with DevStack(bstack, options) as dev:
        yield Running(dev, TinyEmbedding(tiny_dir, torch.device("cpu")))


def sentence(i: int) -> str:
    words = ("queue", "batch", "model", "tensor", "worker", "result", "region", "cache")
    return f"line {i}: " + " ".join(words[(i * 3 + k) % len(words)] for k in range(2 + i % 9))


async def test_map_over_50_texts_keeps_their_order(running: Running) -> None:
    texts = [sentence(i) for i in range(50)]

    def work() -> list[Any]:
        with Client(running.dev.api_url, running.dev.api_key) as client:
            return list(client.map(TINY, texts, concurrency=8, timeout=120))

    outputs = await anyio.to_thread.run_sync(work)
    assert len(outputs) == 50
    assert all(v.dtype == np.float32 and v.shape == (16,) for v in outputs)
    np.testing.assert_allclose(np.stack(outputs), running.expected(texts), atol=1e-6)


def write_inputs(path: Path) -> list[str]:
    """1,000 lines in the three forms (a string, {"text", "id"}, {"inputs"}), one text each."""
    texts = [sentence(i) for i in range(LINES)]
    with path.open("w", encoding="utf-8") as fh:
        for i, text in enumerate(texts):
            item: Any = [text, {"text": text, "id": f"doc-{i}"}, {"inputs": [text]}][i % 3]
            fh.write(json.dumps(item) + "\n")
    return texts


def lines_in(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def summary(stderr: str) -> dict[str, Any]:
    found = SUMMARY.search(stderr)
    assert found is not None, stderr[-3000:]
    return {k: v if k == "head" else int(v) for k, v in found.groupdict().items()}


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as sink:
        return subprocess.Popen(
            [PYTHON, "-m", "conveyor", *args],
            env=subprocess_env(env),
            cwd=REPO,
            stdout=sink,
            stderr=subprocess.STDOUT,
            # Whatever the test runner does with SIGINT, the command gets its default.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )


async def finish(process: subprocess.Popen[bytes], timeout: float) -> int:
    with anyio.move_on_after(timeout):
        while process.poll() is None:  # bounded by the deadline
            await anyio.sleep(0.1)
        return process.returncode
    process.kill()
    process.wait(10)
    raise AssertionError(f"`conveyor submit --file` did not end within {timeout} s")


async def test_bulk_submission_survives_ctrl_c_and_resumes_without_a_duplicate(
    running: Running, tmp_path: Path
) -> None:
    inputs, out = tmp_path / "inputs.jsonl", tmp_path / "results.jsonl"
    texts = write_inputs(inputs)
    args = ["submit", "--file", str(inputs), "--out", str(out), "--model", TINY]
    stack_env = await running.env_file(tmp_path / "stack.env", BULK_TENANT)
    env = {"CONVEYOR_STACK_ENV": str(stack_env)}  # how the command finds a `make dev` stack

    first = start([*args, "--concurrency", "16"], env, tmp_path / "first.log")
    began = time.monotonic()
    try:
        with anyio.fail_after(300):
            while lines_in(out) < INTERRUPT_AT:  # bounded by the deadline
                assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
                await anyio.sleep(0.05)
        first.send_signal(signal.SIGINT)
        code = await finish(first, 60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)
    first_log = (tmp_path / "first.log").read_text()
    assert code == 130, first_log[-3000:]
    one = summary(first_log)
    written_first = lines_in(out)
    jobs_after_first = await running.jobs(BULK_TENANT)
    assert one["head"] == "interrupted" and "run the same command again" in first_log
    assert one["written"] == written_first >= INTERRUPT_AT
    assert written_first <= jobs_after_first < LINES  # stopped half way; in-flight jobs exist

    second = start(args, env, tmp_path / "second.log")
    code = await finish(second, 300)
    took = time.monotonic() - began
    second_log = (tmp_path / "second.log").read_text()
    assert code == 0, second_log[-3000:]
    two = summary(second_log)

    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["line"] for row in rows] == list(range(1, LINES + 1))  # each once, in order
    assert {row["status"] for row in rows} == {"succeeded"}
    assert [row.get("id") for row in rows[1:12:3]] == [f"doc-{i}" for i in range(1, 12, 3)]
    assert all("id" not in row for row in rows[0::3])
    np.testing.assert_allclose(
        np.asarray([row["outputs"][0] for row in rows], dtype=np.float32),
        running.expected(texts),
        atol=1e-6,
    )
    total_jobs = await running.jobs(BULK_TENANT)
    assert total_jobs == LINES  # no job was recorded twice
    assert len({row["job_id"] for row in rows}) == LINES
    assert two["already"] == written_first
    assert two["written"] == LINES - written_first
    # The second run recorded exactly the lines the first had not submitted, and found the
    # ones the first had submitted but not written by their Idempotency-Keys.
    assert two["submitted"] == LINES - jobs_after_first
    assert two["reattached"] == jobs_after_first - written_first
    assert (two["succeeded"], two["failed"]) == (LINES, 0)
    assert "submitted" in second_log and "lines/s" in second_log  # the progress bar's last frame
    print(
        f"\nbulk 1,000 lines: first run wrote {written_first} lines and recorded "
        f"{jobs_after_first} jobs ({one['submitted']} answered) before SIGINT; second run "
        f"skipped {two['already']}, re-attached {two['reattached']}, submitted "
        f"{two['submitted']}; {total_jobs} jobs in the database; {took:.1f} s in all"
    )


def run_in_terminal(args: list[str], env: dict[str, str], timeout: float) -> tuple[int, str]:
    """Run a command on a pseudo-terminal, as a person would; its exit code and what it drew
    (escape sequences removed)."""
    import os
    import pty
    import select

    primary, secondary = pty.openpty()
    process = subprocess.Popen(
        args, stdin=secondary, stdout=secondary, stderr=secondary, env=env, cwd=REPO
    )
    os.close(secondary)
    seen = b""
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([primary], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(primary, 65536)
                except OSError:  # the terminal closed: the command ended
                    break
                if not chunk:
                    break
                seen += chunk
            elif process.poll() is not None:
                break
        code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        os.close(primary)
    return code, re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", seen.decode(errors="replace"))


async def test_bulk_progress_bar_in_a_terminal(running: Running, tmp_path: Path) -> None:
    """What a person sees: the bar and its counts move, then the summary, in a terminal."""
    lines = 30
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text("".join(json.dumps(f"terminal line {i}") + "\n" for i in range(lines)))
    stack_env = await running.env_file(tmp_path / "stack.env", "bulk-tty")
    env = {
        **subprocess_env({"CONVEYOR_STACK_ENV": str(stack_env)}),
        "TERM": "xterm-256color",
        "COLUMNS": "160",
    }
    args = [PYTHON, "-m", "conveyor", "submit", "--file", str(inputs)]
    args += ["--out", str(tmp_path / "out.jsonl"), "--model", TINY]
    code, text = await anyio.to_thread.run_sync(run_in_terminal, args, env, 60)
    assert code == 0, text[-2000:]
    assert f"{lines}/{lines}" in text
    assert f"submitted {lines} · done {lines} · failed 0" in text
    assert f"done: {lines} lines: 0 already in" in text
    assert "━" in text  # the bar itself was drawn
