"""Whether a Docker engine answers here (the LocalStack and PostgreSQL container backends)."""

from __future__ import annotations

import gc
import os
import warnings

__all__ = ["docker_unavailable_reason"]

_DEFAULT_SOCKET = "/var/run/docker.sock"


def docker_unavailable_reason() -> str | None:
    """None when a Docker engine answers a ping, else a sentence saying why not."""
    if not os.environ.get("DOCKER_HOST") and not os.path.exists(_DEFAULT_SOCKET):
        return f"no Docker engine: DOCKER_HOST is unset and {_DEFAULT_SOCKET} does not exist"
    try:
        import docker
    except ImportError:
        return "the docker Python package is not installed (pip install 'conveyor[docker]')"
    # docker-py leaks its socket when the engine does not answer during from_env();
    # collect it here, where its ResourceWarning is expected, rather than in a random test.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            client = docker.from_env(timeout=3)
            try:
                client.ping()
            finally:
                client.close()
        except Exception as exc:  # any failure to reach the engine means: no Docker here
            return f"no Docker engine answers ({type(exc).__name__}: {exc})"
        finally:
            gc.collect()
    return None
