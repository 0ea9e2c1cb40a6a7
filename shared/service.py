"""The one way every service process starts, runs and stops.

``main(settings_cls, body)`` loads the settings (a configuration error ends the process with
status 2 and a message naming each variable), configures logging (every line names the
service) and tracing (:mod:`shared.tracing`: exported only where ``OTEL_EXPORTER_OTLP_ENDPOINT``
asks), serves Prometheus metrics on ``METRICS_PORT`` when it is set, runs ``body`` until it
returns or SIGTERM/SIGINT arrives, exports the spans left, and exits 0 after a clean stop.
"""

from __future__ import annotations

import importlib.util
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio

from shared.config import CommonSettings, load_settings
from shared.errors import ConfigError, ConveyorError, leaves
from shared.lifeline import exit_with_supervisor
from shared.liveness import DEFAULT_STALE_AFTER_S, serve_metrics_and_health
from shared.telemetry import configure_logging, get_logger
from shared.tracing import configure_tracing, shutdown_tracing

__all__ = ["EXIT_CONFIG", "EXIT_FAILED", "loop_options", "main"]

EXIT_CONFIG = 2
EXIT_FAILED = 1

S = TypeVar("S", bound=CommonSettings)
Body = Callable[[S, anyio.Event], Awaitable[None]]


def main(settings_cls: type[S], body: Body[S]) -> int:
    """Run a service; ``body(settings, stopping)`` should return soon after ``stopping``."""
    name = settings_cls.service
    exit_with_supervisor()
    try:
        settings = load_settings(settings_cls)
        backend_options = loop_options(settings.event_loop)
    except ConfigError as exc:
        print(f"{name}: {exc}", file=sys.stderr)  # noqa: T201 - logging is not configured yet
        return EXIT_CONFIG
    configure_logging(settings.log_level, settings.log_format, service=name)
    configure_tracing(name)
    log = get_logger(name)
    if settings.metrics_port is not None:
        # /metrics, and /healthz: whether the receive loops are alive (a liveness probe).
        stale_after_s = max(DEFAULT_STALE_AFTER_S, 4.0 * settings.sqs_wait_s)
        try:
            serve_metrics_and_health(
                settings.metrics_port, settings.metrics_host, stale_after_s=stale_after_s
            )
        except OSError as exc:  # a port in use: one line naming it, not a traceback
            address = f"{settings.metrics_host}:{settings.metrics_port}"
            log.error("cannot serve metrics", address=address, error=exc.strerror or str(exc))
            return EXIT_CONFIG
        log.info("metrics", url=f"http://{settings.metrics_host}:{settings.metrics_port}/metrics")

    async def run() -> None:
        stopping = anyio.Event()
        async with anyio.create_task_group() as tg:

            async def watch_signals() -> None:
                # Held for the whole run: a second signal (Ctrl-C reaches every process of
                # the terminal's group, then a supervisor sends SIGTERM) must not fall back to
                # the default action and kill the process in the middle of its drain.
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for signum in signals:
                        name = signal.Signals(signum).name
                        if stopping.is_set():
                            log.info("already stopping", signal=name)
                        else:
                            log.info("stopping", signal=name)
                            stopping.set()

            tg.start_soon(watch_signals)
            await body(settings, stopping)
            tg.cancel_scope.cancel()

    failures: list[BaseException] = []
    try:
        anyio.run(run, backend_options=backend_options)
    except* ConveyorError as group:  # the task group wraps what the body raised
        failures = leaves(group)
    finally:
        # The run is over and the process is exiting: a late signal must not turn a clean
        # exit into a killed one.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        shutdown_tracing()
    for failure in failures:
        log.error("failed", error=str(failure))
    if failures:
        return EXIT_FAILED
    log.info("stopped")
    return 0


def loop_options(choice: str) -> dict[str, Any]:
    """anyio's asyncio backend options for EVENT_LOOP: uvloop (libuv: cheaper per socket
    event, which is most of what these services do) where it is installed, unless asked not."""
    if choice == "asyncio":
        return {}
    if importlib.util.find_spec("uvloop") is None:
        if choice == "uvloop":
            raise ConfigError("EVENT_LOOP=uvloop but uvloop is not installed")
        return {}
    return {"use_uvloop": True}
