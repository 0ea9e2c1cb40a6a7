"""Build-time check of each image's venv (compose/Dockerfile: ``check_imports.py base|infer``).

The images install the project wheel with ``--no-deps`` and their dependencies from
``compose/requirements-<image>.txt``. This proves both halves: what must be absent is (torch
and the model stack outside infer; the emulator's moto and PostgreSQL everywhere), and every
module the image runs imports, so a dependency missing from a list fails the build instead of
a container start. tests/unit/test_compose.py runs :func:`import_all` with everything outside
the base list hidden.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys

ABSENT = ("torch", "transformers", "sentence_transformers", "safetensors", "moto", "pgserver")
PACKAGES = ("shared", "services.ingest", "services.persist", "services.notify")
# infer: torch and the model stack, still no emulator and no sentence-transformers.
INFER_ABSENT = ("sentence_transformers", "moto", "pgserver")
INFER_PACKAGES = ("shared", "services.infer")


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


def main(argv: list[str]) -> int:
    image = argv[0] if argv else "base"
    absent, packages = (INFER_ABSENT, INFER_PACKAGES) if image == "infer" else (ABSENT, PACKAGES)
    present = installed(absent)
    if present:
        print(f"installed but must not be: {', '.join(present)}", file=sys.stderr)  # noqa: T201
        return 1
    modules = import_all(packages)
    if image == "infer":  # the model ships in its package: it must be there, weights and all
        from services.infer.manifest import default_model_dir

        print(f"model: {default_model_dir()}")  # noqa: T201
    print(f"ok: {len(modules)} modules import without {', '.join(absent)}")  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
