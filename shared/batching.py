"""Dynamic batching: many concurrent callers, one call per batch.

Each caller ``await batcher.submit(item)`` and gets its own result; behind it, items are grouped
until the batch is full (``max_items``, or ``max_cost`` by the ``cost`` function, e.g. tokens)
or the oldest item has waited ``max_wait_s``, then ``run_batch(items)`` runs once for all of
them. ``run_batch`` returns one result per item, in order; an item's result may be an
Exception, which is raised to that caller alone. This is how infer batches across SQS messages,
and how publishers and database writers batch across concurrent handlers.

Hand-written: the batching helpers of Ray Serve and Triton are tied to their servers; this is
one small class on anyio primitives.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = ["BatchStats", "Batcher"]

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class BatchStats:
    batches: int = 0
    items: int = 0
    largest: int = 0
    sizes: list[int] = field(default_factory=list)

    @property
    def mean_size(self) -> float:
        return self.items / self.batches if self.batches else 0.0


class _Slot(Generic[T, R]):
    __slots__ = ("done", "error", "item", "result")

    def __init__(self, item: T) -> None:
        self.item = item
        self.done = anyio.Event()
        self.result: R | None = None
        self.error: BaseException | None = None


class Batcher(Generic[T, R]):
    """Groups concurrent ``submit`` calls into calls of ``run_batch``.

    ``start(tg)`` runs the batching loop in a task group; ``concurrency`` batches may run at
    once (1 for a model on one device). Stopping the task group cancels waiting callers.
    """

    def __init__(
        self,
        run_batch: Callable[[list[T]], Awaitable[Sequence[R | BaseException]]],
        *,
        max_items: int,
        max_wait_s: float,
        max_cost: float = math.inf,
        cost: Callable[[T], float] = lambda _: 1.0,
        concurrency: int = 1,
        keep_sizes: int = 10_000,
    ) -> None:
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        self._run_batch = run_batch
        self.max_items = max_items
        self.max_wait_s = max_wait_s
        self.max_cost = max_cost
        self._cost = cost
        self._send: MemoryObjectSendStream[_Slot[T, R]] | None = None
        self._slots = anyio.Semaphore(concurrency)
        self._keep_sizes = keep_sizes
        self.stats = BatchStats()

    def start(self, tg: TaskGroup) -> None:
        # The streams live as long as the loop, so that an unstarted batcher holds nothing.
        self._send, receive = anyio.create_memory_object_stream[_Slot[T, R]](math.inf)
        tg.start_soon(self._loop, tg, self._send, receive)

    async def submit(self, item: T) -> R:
        if self._send is None:
            raise RuntimeError("the batcher has not been started")
        slot: _Slot[T, R] = _Slot(item)
        await self._send.send(slot)
        await slot.done.wait()
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]

    async def _loop(
        self,
        tg: TaskGroup,
        send: MemoryObjectSendStream[_Slot[T, R]],
        receive: MemoryObjectReceiveStream[_Slot[T, R]],
    ) -> None:
        carry: _Slot[T, R] | None = None
        with send, receive:  # closed with the loop: late callers fail fast
            while True:
                # Wait for a free runner first, so that while the model is busy items pile up
                # and the next batch is as large as they allow.
                await self._slots.acquire()
                first = carry if carry is not None else await receive.receive()
                carry = None
                batch, cost = [first], self._cost(first.item)
                deadline = anyio.current_time() + self.max_wait_s
                while len(batch) < self.max_items and cost < self.max_cost:
                    slot: _Slot[T, R] | None = None
                    with anyio.move_on_after(deadline - anyio.current_time()):
                        slot = await receive.receive()
                    if slot is None:
                        break
                    slot_cost = self._cost(slot.item)
                    if cost + slot_cost > self.max_cost:
                        carry = slot  # it starts the next batch
                        break
                    batch.append(slot)
                    cost += slot_cost
                tg.start_soon(self._run, batch)

    async def _run(self, batch: list[_Slot[T, R]]) -> None:
        try:
            self._record(len(batch))
            try:
                results = await self._run_batch([s.item for s in batch])
                if len(results) != len(batch):
                    raise RuntimeError(
                        f"run_batch returned {len(results)} results for {len(batch)} items"
                    )
            except Exception as exc:  # the whole batch failed: every caller sees why
                results = [exc] * len(batch)
            for slot, result in zip(batch, results, strict=True):
                if isinstance(result, BaseException):
                    slot.error = result
                else:
                    slot.result = result
                slot.done.set()
        finally:
            self._slots.release()

    def _record(self, size: int) -> None:
        stats = self.stats
        stats.batches += 1
        stats.items += size
        stats.largest = max(stats.largest, size)
        if len(stats.sizes) < self._keep_sizes:
            stats.sizes.append(size)
