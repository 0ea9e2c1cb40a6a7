"""Standalone mode: start a stack, print its environment, run until Ctrl-C or SIGTERM."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import anyio

from emulator.harness import Emulator, EmulatorOptions

__all__ = ["serve"]


async def serve(options: EmulatorOptions, env_file: Path | None = None) -> None:
    started = time.perf_counter()
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with Emulator(options) as stack:
            exports = "\n".join(stack.exports()) + "\n"
            if env_file is not None:  # first, so it is there once stdout says ready
                # The file holds keys: readable by its owner only.
                fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as fh:
                    fh.write(exports)
            sys.stdout.write(exports)
            sys.stdout.flush()
            elapsed = time.perf_counter() - started
            print(  # noqa: T201 - the operator's status line, on stderr beside the exports
                f"emulator ready in {elapsed:.1f}s: AWS ({options.aws}) at "
                f"{stack.endpoint.url or 'real AWS'}, IAM enforced: {stack.endpoint.enforces_iam}; "
                "Ctrl-C to stop",
                file=sys.stderr,
                flush=True,
            )
            try:
                async for _ in signals:
                    break
            finally:
                if env_file is not None:
                    await anyio.Path(env_file).unlink(missing_ok=True)
    print("emulator stopped", file=sys.stderr, flush=True)  # noqa: T201
