"""``python -m shared.probe``: the images' HEALTHCHECK, against a real server on loopback."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from shared.probe import health_url, main
from tests.conftest import free_port

PERSIST_ENV = {"PERSIST_DATABASE_URL": "postgresql://p:pw@127.0.0.1:5432/conveyor"}


@pytest.fixture
def persist_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in PERSIST_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("METRICS_PORT", raising=False)
    monkeypatch.delenv("PERSIST_METRICS_PORT", raising=False)


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture
def server() -> Iterator[http.server.HTTPServer]:
    httpd = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_ingest_is_probed_on_its_http_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INGEST_DATABASE_URL", "postgresql://i:pw@127.0.0.1:5432/conveyor")
    monkeypatch.setenv("INGEST_HTTP_PORT", "8123")
    assert health_url("ingest") == "http://127.0.0.1:8123/healthz"


def test_a_worker_is_probed_on_its_metrics_port(
    persist_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METRICS_PORT", "9090")
    assert health_url("persist") == "http://127.0.0.1:9090/healthz"
    monkeypatch.setenv("PERSIST_METRICS_PORT", "9103")  # the service's own name wins
    assert health_url("persist") == "http://127.0.0.1:9103/healthz"


def test_a_worker_without_a_metrics_port_is_an_error_not_a_pass(persist_env: None) -> None:
    with pytest.raises(SystemExit, match="PERSIST_METRICS_PORT or METRICS_PORT is unset"):
        health_url("persist")


@pytest.mark.parametrize(("status", "expected"), [(200, 0), (503, 1)])
def test_the_exit_status_follows_healthz(
    status: int,
    expected: int,
    persist_env: None,
    server: http.server.HTTPServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_Health, "status", status)
    monkeypatch.setenv("PERSIST_METRICS_PORT", str(server.server_address[1]))
    assert main(["persist"]) == expected


def test_nothing_listening_is_unhealthy(
    persist_env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PERSIST_METRICS_PORT", str(free_port()))
    assert main(["persist"]) == 1
    assert "probe: http://127.0.0.1:" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [[], ["provision"], ["persist", "extra"]])
def test_usage(argv: list[str]) -> None:
    assert main(argv) == 2
