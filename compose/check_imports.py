"""Build-time check of the images without torch (run by compose/Dockerfile, stage venv-base).

Those images install the project wheel with ``--no-deps`` and their dependencies from
``compose/requirements-base.txt``. This proves both halves: torch and the model stack are
absent, and every module that ingest, persist, notify and ``conveyor provision`` can load
imports, so a dependency missing from the list fails the build instead of a container start.
tests/unit/test_compose.py runs :func:`import_all` with everything outside that list hidden.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys

ABSENT = ("torch", "transformers", "sentence_transformers", "safetensors")
PACKAGES = ("shared", "services.ingest", "services.persist", "services.notify")


def installed(names: tuple[str, ...] = ABSENT) -> list[str]:
    """Those of ``names`` that are importable here."""
    return [name for name in names if importlib.util.find_spec(name) is not None]


def import_all(packages: tuple[str, ...] = PACKAGES) -> list[str]:
    """Import every module of ``packages`` except ``__main__`` (that would run a service)."""
    done = []
    for name in packages:
        package = importlib.import_module(name)
        done.append(name)
        for module in pkgutil.walk_packages(package.__path__, f"{name}."):
            if module.name.rsplit(".", 1)[-1] != "__main__":
                importlib.import_module(module.name)
                done.append(module.name)
    return done


def main() -> int:
    present = installed()
    if present:
        print(f"installed but must not be: {', '.join(present)}", file=sys.stderr)  # noqa: T201
        return 1
    modules = import_all()
    print(f"ok: {len(modules)} modules import without {', '.join(ABSENT)}")  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
