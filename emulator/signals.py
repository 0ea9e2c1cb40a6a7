"""Stopping a program that holds a stack, on SIGINT or SIGTERM, through its clean-up.

SIGTERM's default action ends the process where it stands, so the ``async with`` blocks that
stop the services and the embedded PostgreSQL never run; PostgreSQL, a daemon of its own, then
outlives the program with its data directory. asyncio turns only the first SIGINT into a
cancellation. :func:`run_until_signalled` makes both signals cancel the program's main
coroutine, whose clean-up then runs as it does at a normal end. The benchmarks use it;
``conveyor dev`` and ``python -m emulator`` have their own loops (:mod:`emulator.dev`,
:mod:`emulator.serve`).
"""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable

import anyio

__all__ = ["run_until_signalled"]


async def run_until_signalled(
    main: Callable[[], Awaitable[None]],
    on_signal: Callable[[signal.Signals], None] | None = None,
) -> signal.Signals | None:
    """Run ``main`` until it returns or SIGINT/SIGTERM arrives; then cancel it, wait for its
    clean-up, and answer the signal (None when ``main`` ended by itself)."""
    received: signal.Signals | None = None
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                nonlocal received
                async for signum in signals:
                    received = signal.Signals(signum)
                    if on_signal is not None:
                        on_signal(received)
                    tg.cancel_scope.cancel()
                    return

            tg.start_soon(watch)
            await main()
            tg.cancel_scope.cancel()
    return received
