"""Errors of the model side of infer, under the project's :class:`ConveyorError`.

ConveyorError
└── ModelError                  anything about a model artifact or its handler
    ├── ModelNotFound           no such model or version in the models bucket
    ├── ModelIntegrityError     a file or manifest does not match what was pushed
    ├── ModelRefused            refused on principle: pickled weights, unsafe paths
    └── ModelLoadError          the files are sound but the handler could not load them
        └── UnknownModelKind    no handler is registered for the manifest's kind
"""

from __future__ import annotations

from shared.errors import ConveyorError

__all__ = [
    "ModelError",
    "ModelIntegrityError",
    "ModelLoadError",
    "ModelNotFound",
    "ModelRefused",
    "UnknownModelKind",
]


class ModelError(ConveyorError):
    """Base class of the errors about model artifacts and handlers."""


class ModelNotFound(ModelError):
    """The model (or the requested version) is not in the models bucket."""


class ModelIntegrityError(ModelError):
    """A downloaded file's size or SHA-256 differs from the manifest, or the manifest is bad."""


class ModelRefused(ModelError):
    """The artifact breaks a rule we never bend: safetensors only, relative paths only."""


class ModelLoadError(ModelError):
    """The handler failed to build a model from verified files."""


class UnknownModelKind(ModelLoadError):
    """No handler is registered for this kind."""
