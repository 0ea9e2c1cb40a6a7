import anyio
import pytest

from shared.batching import Batcher

pytestmark = pytest.mark.anyio


async def _run(batcher: Batcher[int, int], items: list[int]) -> dict[int, int | str]:
    results: dict[int, int | str] = {}

    async def call(item: int) -> None:
        try:
            results[item] = await batcher.submit(item)
        except ValueError as exc:
            results[item] = str(exc)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            batcher.start(tg)
            async with anyio.create_task_group() as callers:
                for item in items:
                    callers.start_soon(call, item)
            tg.cancel_scope.cancel()
    return results


async def test_concurrent_calls_share_batches_and_get_their_own_results() -> None:
    calls: list[list[int]] = []

    async def double(items: list[int]) -> list[int | BaseException]:
        calls.append(items)
        await anyio.sleep(0.01)
        return [i * 2 for i in items]

    batcher: Batcher[int, int] = Batcher(double, max_items=8, max_wait_s=0.05)
    results = await _run(batcher, list(range(20)))
    assert results == {i: i * 2 for i in range(20)}
    assert max(len(c) for c in calls) == 8
    assert len(calls) < 20
    assert batcher.stats.items == 20
    assert batcher.stats.batches == len(calls)


async def test_cost_budget_splits_batches() -> None:
    calls: list[list[int]] = []

    async def echo(items: list[int]) -> list[int | BaseException]:
        calls.append(items)
        return list(items)

    batcher: Batcher[int, int] = Batcher(
        echo, max_items=100, max_wait_s=0.05, max_cost=10, cost=float
    )
    await _run(batcher, [6, 6, 6, 3, 20])
    assert all(sum(c) <= 10 or len(c) == 1 for c in calls)
    assert sorted(i for c in calls for i in c) == [3, 6, 6, 6, 20]


async def test_per_item_errors_reach_only_their_caller() -> None:
    async def picky(items: list[int]) -> list[int | BaseException]:
        return [ValueError(f"no {i}") if i % 3 == 0 else i for i in items]

    results = await _run(Batcher(picky, max_items=10, max_wait_s=0.02), [1, 2, 3, 4, 6])
    assert results == {1: 1, 2: 2, 3: "no 3", 4: 4, 6: "no 6"}


async def test_whole_batch_failure_reaches_every_caller() -> None:
    async def broken(items: list[int]) -> list[int | BaseException]:
        raise ValueError("model crashed")

    results = await _run(Batcher(broken, max_items=10, max_wait_s=0.02), [1, 2, 3])
    assert results == {1: "model crashed", 2: "model crashed", 3: "model crashed"}


async def test_a_lone_item_waits_at_most_max_wait() -> None:
    async def echo(items: list[int]) -> list[int | BaseException]:
        return list(items)

    batcher: Batcher[int, int] = Batcher(echo, max_items=64, max_wait_s=0.1)
    began = anyio.current_time()
    assert await _run(batcher, [7]) == {7: 7}
    assert anyio.current_time() - began < 2  # bounded by max_wait, not by filling the batch
