"""Model handlers: the extension point that turns verified files into a model.

A manifest names its handler ``kind``; a handler class (or any factory) registers that kind:

    @register("my-kind")
    class MyHandler:
        kind: ClassVar[str] = "my-kind"

        def __init__(self, directory: Path, device: torch.device) -> None: ...
        def cost(self, text: str) -> int: ...
        def predict(self, inputs: list[str]) -> numpy.ndarray: ...

``predict`` returns one vector per input: a float32 array of shape ``(len(inputs), dim)`` is
what infer carries on as it is; a CPU tensor or lists of numbers are converted (to float32).
A handler may also have ``compile() -> None``: with ``INFER_COMPILE=true`` infer calls it once
after loading, before the first job (the built-in kind wraps its model in ``torch.compile``);
a handler without it runs as it is.

Modules that register kinds are imported by the operator's ``INFER_HANDLER_MODULES`` setting,
never because a manifest asked: code to run comes from the deployment, not from the bucket.
The built-in ``sentence-embedding`` kind (``services.infer.embedding``) is always available.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import ClassVar, Literal, Protocol, TypeVar

import numpy.typing as npt
import torch

from services.infer.errors import ModelError, ModelLoadError, UnknownModelKind
from shared.errors import ConfigError

__all__ = [
    "BUILTIN_MODULES",
    "HandlerFactory",
    "ModelHandler",
    "choose_device",
    "compile_handler",
    "import_handler_modules",
    "known_kinds",
    "load_handler",
    "register",
]

BUILTIN_MODULES = ("services.infer.embedding",)


class ModelHandler(Protocol):
    """A loaded model. ``predict`` blocks; the caller runs it in a worker thread, one call at a
    time per device. ``cost`` runs on the event loop, so it must be cheap."""

    kind: ClassVar[str]

    def cost(self, text: str) -> int:
        """Tokens of one input as the model sees it (after truncation to the model's maximum
        length, as ``predict`` truncates), for the batch token budget."""
        ...

    def predict(self, inputs: list[str]) -> npt.ArrayLike:
        """One output vector per input, in order, all of one length: ideally a float32 array
        of shape ``(len(inputs), dim)`` (:func:`services.infer.runner.as_matrix`). May raise
        for the whole batch."""
        ...


HandlerFactory = Callable[[Path, torch.device], ModelHandler]
F = TypeVar("F", bound=HandlerFactory)

_factories: dict[str, HandlerFactory] = {}


def register(kind: str) -> Callable[[F], F]:
    """Register ``factory(directory, device)`` for ``kind``.

    Registering the same factory again (a module imported twice) is harmless; a different
    factory for a taken kind is a programming error.
    """

    def decorate(factory: F) -> F:
        current = _factories.get(kind)
        if current is not None and _name(current) != _name(factory):
            raise ValueError(f"model kind {kind!r} is already registered by {_name(current)}")
        _factories[kind] = factory
        return factory

    return decorate


def _name(factory: HandlerFactory) -> str:
    return f"{factory.__module__}.{getattr(factory, '__qualname__', repr(factory))}"


def import_handler_modules(modules: Iterable[str]) -> list[str]:
    """Import the built-in handlers and ``modules`` (INFER_HANDLER_MODULES); the known kinds."""
    for module in (*BUILTIN_MODULES, *modules):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(
                f"INFER_HANDLER_MODULES names {module!r}, which cannot be imported: {exc}"
            ) from exc
    return known_kinds()


def known_kinds() -> list[str]:
    return sorted(_factories)


def load_handler(kind: str, directory: Path, device: torch.device) -> ModelHandler:
    """Build the handler of ``kind`` from verified files in ``directory`` (blocking)."""
    if kind not in _factories:
        import_handler_modules(())  # the built-in kinds register on import
    factory = _factories.get(kind)
    if factory is None:
        raise UnknownModelKind(
            f"no handler for model kind {kind!r} (known kinds: {', '.join(known_kinds())}); "
            "name the module that registers it in INFER_HANDLER_MODULES"
        )
    try:
        return factory(Path(directory), device)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelLoadError(
            f"the {kind!r} handler could not load the model in {directory} on {device}: {exc}"
        ) from exc


def compile_handler(handler: ModelHandler) -> bool:
    """INFER_COMPILE: call the handler's optional ``compile()`` (blocking: the compiler runs
    now, not on the first job). False when the handler has none and so runs as it is."""
    compile_ = getattr(handler, "compile", None)
    if not callable(compile_):
        return False
    try:
        compile_()
    except ModelError:
        raise
    except Exception as exc:
        raise ModelLoadError(
            f"INFER_COMPILE: the {handler.kind!r} handler could not be compiled: {exc}; "
            "unset INFER_COMPILE to run it uncompiled"
        ) from exc
    return True


def choose_device(setting: Literal["auto", "cpu", "cuda"]) -> torch.device:
    """INFER_DEVICE: ``auto`` takes CUDA when present, else the CPU."""
    if setting == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if setting == "cuda":
        raise ConfigError(
            "INFER_DEVICE=cuda but no CUDA device is available "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'}); "
            "use INFER_DEVICE=auto or cpu, or run on a GPU node"
        )
    return torch.device("cpu")
