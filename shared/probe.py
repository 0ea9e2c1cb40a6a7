"""``python -m shared.probe SERVICE``: the container health probe.

Asks the service's own ``/healthz`` on loopback and exits 0 (healthy) or 1 (not, with the
reason on stderr). The port comes from the service's settings, read the way the service reads
them: ingest answers on its HTTP port, the queue workers on their metrics port, where ``/healthz``
says whether the receive loop still makes progress (shared/liveness.py). A worker started
without a metrics port cannot be probed: that is an error here, not a pass.

The images have no curl; proxies are bypassed because the target is loopback.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

from shared.config import (
    CommonSettings,
    InferSettings,
    IngestSettings,
    NotifySettings,
    PersistSettings,
    load_settings,
)

__all__ = ["health_url", "main"]

SETTINGS: dict[str, type[CommonSettings]] = {
    "ingest": IngestSettings,
    "infer": InferSettings,
    "persist": PersistSettings,
    "notify": NotifySettings,
}

TIMEOUT_S = 4.0


def health_url(service: str) -> str:
    settings = load_settings(SETTINGS[service])
    if isinstance(settings, IngestSettings):
        return f"http://127.0.0.1:{settings.http_port}/healthz"
    if settings.metrics_port is None:
        name = settings.env_names("metrics_port")
        raise SystemExit(f"probe: {service} has no metrics port to probe ({name} is unset)")
    return f"http://127.0.0.1:{settings.metrics_port}/healthz"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in SETTINGS:
        print(f"usage: python -m shared.probe {{{','.join(SETTINGS)}}}", file=sys.stderr)  # noqa: T201
        return 2
    url = health_url(args[0])
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=TIMEOUT_S) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:  # HTTPError (503 stale) is a URLError
        print(f"probe: {url}: {exc}", file=sys.stderr)  # noqa: T201
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
