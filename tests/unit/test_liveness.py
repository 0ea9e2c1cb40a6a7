"""A worker's liveness: /healthz turns 503 when a receive loop stops making progress."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from shared.liveness import Liveness, health_app


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def get(app: Any, path: str) -> tuple[str, dict[str, Any] | bytes]:
    answer: dict[str, str] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        answer["status"] = status

    body = b"".join(app({"PATH_INFO": path, "REQUEST_METHOD": "GET"}, start_response))
    if path == "/healthz":
        return answer["status"], json.loads(body)
    return answer["status"], body


def metrics(_environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", [])
    return [b"conveyor_metric 1\n"]


def test_a_loop_without_progress_is_stale_and_a_stopped_one_is_not_watched() -> None:
    clock = Clock()
    liveness = Liveness(clock)
    app = health_app(liveness, stale_after_s=60, metrics=metrics)
    assert get(app, "/healthz") == ("200 OK", {"status": "ok", "stale_s": {}})  # none yet

    liveness.beat("infer conveyor-infer-m")
    clock.now += 59
    assert get(app, "/healthz")[0] == "200 OK"
    clock.now += 2  # 61 s since the last receive or finished message
    assert get(app, "/healthz") == (
        "503 Service Unavailable",
        {"status": "stale", "stale_s": {"infer conveyor-infer-m": 61.0}},
    )
    liveness.beat("infer conveyor-infer-m")  # progress again
    assert get(app, "/healthz")[0] == "200 OK"
    clock.now += 120
    liveness.forget("infer conveyor-infer-m")  # a drain: stopped on purpose
    assert get(app, "/healthz")[0] == "200 OK"


def test_every_other_path_is_the_metrics() -> None:
    app = health_app(Liveness(Clock()), stale_after_s=60, metrics=metrics)
    assert get(app, "/metrics") == ("200 OK", b"conveyor_metric 1\n")
