"""The models bucket: push a version, resolve one, fetch a verified copy, list them.

``push_model`` uploads every file, then the manifest (its presence marks the version
complete), then ``<name>/LATEST``. ``fetch_model`` downloads into a local cache and checks every
file's size and SHA-256 against the manifest before it returns; each file is written under a
hidden temporary name and renamed into place only once verified, so a crash never leaves a half
file that looks complete, and a cached copy is re-verified before it is reused.

Weights must be safetensors, which are parsed, never unpickled: pickle formats are refused by
name, and every ``.safetensors`` file must parse as one, at push and again at fetch.

No torch here, so that the CLI and the service start without paying for it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import anyio
import anyio.to_thread
from botocore.exceptions import ClientError
from pydantic import ValidationError
from safetensors import SafetensorError, safe_open

from services.infer.errors import ModelError, ModelIntegrityError, ModelNotFound, ModelRefused
from services.infer.manifest import (
    LATEST,
    MANIFEST_NAME,
    VERSION_PATTERN,
    Manifest,
    ManifestFile,
    file_key,
    is_pickle_path,
    latest_key,
    manifest_key,
    parse_manifest,
)
from shared.aws import AwsClients, aws_errors
from shared.telemetry import get_logger

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

__all__ = [
    "ModelVersion",
    "check_safetensors",
    "fetch_model",
    "list_models",
    "push_model",
    "resolve_version",
    "wait_for_version",
]

CHUNK_BYTES = 1 << 20
_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})

log = get_logger("services.infer.registry")


class ModelVersion(NamedTuple):
    name: str
    version: str
    latest: bool


def _push_hint(name: str) -> str:
    return f"push it with `conveyor models push <dir> --name {name} --version <version>`"


# -- push ------------------------------------------------------------------------------------


async def push_model(
    clients: AwsClients, bucket: str, directory: Path, *, name: str, version: str, kind: str
) -> Manifest:
    """Upload ``directory`` as ``name``/``version`` and point LATEST at it.

    Versions are immutable: re-pushing identical content only moves LATEST (a rollback);
    different content under an existing version is refused, since workers cache by version.
    """
    try:
        files = await anyio.to_thread.run_sync(_scan, Path(directory))
        manifest = Manifest(
            name=name,
            version=version,
            kind=kind,
            files=tuple(entry for entry, _ in files),
            created_at=datetime.now(UTC),
        )
    except ValidationError as exc:
        raise ModelRefused(f"cannot push {directory}: {_problems(exc)}") from None
    s3 = await clients.s3()
    key = manifest_key(name, version)
    existing = await _read(clients, bucket, key)
    if existing is not None:
        old = parse_manifest(existing, source=f"s3://{bucket}/{key}")
        if (old.kind, old.files) != (manifest.kind, manifest.files):
            raise ModelRefused(
                f"s3://{bucket}/{key} already holds a different {name} version {version}; "
                "versions are immutable (workers cache them by version): push a new version"
            )
        manifest = old
    else:
        with aws_errors(clients.settings, resource=bucket):
            for entry, path in files:
                await s3.upload_file(str(path), bucket, file_key(name, version, entry.path))
            # Last: a manifest in the bucket means every file it lists is there.
            await s3.put_object(
                Bucket=bucket, Key=key, Body=manifest.to_json(), ContentType="application/json"
            )
    with aws_errors(clients.settings, resource=bucket):
        await s3.put_object(
            Bucket=bucket, Key=latest_key(name), Body=version.encode(), ContentType="text/plain"
        )
    return manifest


def _scan(directory: Path) -> list[tuple[ManifestFile, Path]]:
    """Every regular file under ``directory`` (dotfiles skipped), checked and digested."""
    if not directory.is_dir():
        raise ModelError(f"cannot push {directory}: it is not a directory")
    found = [
        path
        for path in sorted(directory.rglob("*"))
        if path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(directory).parts)
    ]
    if not found:
        raise ModelRefused(f"cannot push {directory}: it holds no files")
    pickles = [
        path.relative_to(directory).as_posix() for path in found if is_pickle_path(path.name)
    ]
    if pickles:
        raise ModelRefused(
            f"refusing to push {directory}: pickle-format weights ({', '.join(pickles)}) can "
            "run code when loaded; Conveyor accepts only .safetensors weights (convert them "
            "with safetensors.torch.save_file) and never unpickles"
        )
    entries = []
    for path in found:
        if path.suffix == ".safetensors":
            check_safetensors(path)
        size, digest = _digest(path)
        rel = path.relative_to(directory).as_posix()
        entries.append((ManifestFile(path=rel, sha256=digest, size=size), path))
    return entries


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(map(str, e['loc'])) or 'manifest'}: {e['msg']}"
        for e in exc.errors(include_url=False)
    )


# -- resolve and fetch -----------------------------------------------------------------------


async def resolve_version(clients: AwsClients, bucket: str, name: str, version: str | None) -> str:
    """``version`` itself when it was pushed completely; ``None`` means LATEST."""
    if version is None:
        raw = await _read(clients, bucket, latest_key(name))
        if raw is None:
            raise ModelNotFound(
                f"model {name!r} is not in the models bucket {bucket!r} at "
                f"{clients.settings.where} (no {latest_key(name)} pointer); {_push_hint(name)}"
            )
        version = raw.decode("utf-8", errors="replace").strip()
        if not VERSION_PATTERN.match(version):
            raise ModelIntegrityError(
                f"s3://{bucket}/{latest_key(name)} holds {version!r}, not a version; "
                f"{_push_hint(name)}"
            )
    s3 = await clients.s3()
    with aws_errors(clients.settings, resource=bucket):
        try:
            await s3.head_object(Bucket=bucket, Key=manifest_key(name, version))
        except ClientError as exc:
            if not _is_missing(exc):
                raise
            raise ModelNotFound(
                f"version {version!r} of model {name!r} is not in the models bucket {bucket!r} "
                f"at {clients.settings.where} (no {manifest_key(name, version)}); "
                f"{_push_hint(name)}"
            ) from None
    return version


async def wait_for_version(
    clients: AwsClients,
    bucket: str,
    name: str,
    version: str | None,
    stopping: anyio.Event,
    *,
    first_delay_s: float = 0.5,
    max_delay_s: float = 5.0,
) -> str | None:
    """:func:`resolve_version`, waiting while the model has no such version; None if
    ``stopping`` is set first.

    A worker started before its model is pushed waits rather than crash-looping: it logs
    once, at warning, what to run, and looks again with a backoff of at most ``max_delay_s``,
    so a push is picked up within seconds.
    """
    delay = first_delay_s
    warned = False
    while True:
        try:
            return await resolve_version(clients, bucket, name, version)
        except ModelNotFound as exc:
            if not warned:
                log.warning("waiting for a deployed version of the model", model=name, why=str(exc))
                warned = True
        with anyio.move_on_after(delay):
            await stopping.wait()
        if stopping.is_set():
            return None
        delay = min(delay * 2, max_delay_s)


async def fetch_model(
    clients: AwsClients, bucket: str, name: str, version: str, cache_dir: Path
) -> tuple[Manifest, Path]:
    """Download ``name``/``version`` into ``cache_dir/<name>/<version>/``, verified."""
    key = manifest_key(name, version)
    raw = await _read(clients, bucket, key)
    if raw is None:
        raise ModelNotFound(
            f"version {version!r} of model {name!r} is not in the models bucket {bucket!r} "
            f"at {clients.settings.where} (no {key}); {_push_hint(name)}"
        )
    manifest = parse_manifest(raw, source=f"s3://{bucket}/{key}")
    if (manifest.name, manifest.version) != (name, version):
        raise ModelIntegrityError(
            f"s3://{bucket}/{key} describes {manifest.name} version {manifest.version}, "
            f"not {name} version {version}"
        )
    target = Path(cache_dir) / name / version
    for entry in manifest.files:
        dest = target / entry.path
        if not await anyio.to_thread.run_sync(_cached, dest, entry):
            await _download(clients, bucket, file_key(name, version, entry.path), dest, entry)
        if dest.suffix == ".safetensors":  # as pushed, but was it pushed by our tool?
            await anyio.to_thread.run_sync(check_safetensors, dest)
    await anyio.to_thread.run_sync(_write_atomically, target / MANIFEST_NAME, manifest.to_json())
    return manifest, target


def _cached(dest: Path, entry: ManifestFile) -> bool:
    """Whether ``dest`` already holds exactly this entry (re-verified, never trusted)."""
    if not dest.is_file():
        return False
    size, digest = _digest(dest)
    if (size, digest) == (entry.size, entry.sha256):
        return True
    log.warning("model_cache_mismatch", path=str(dest), expected=entry.sha256, actual=digest)
    return False


async def _download(
    clients: AwsClients, bucket: str, key: str, dest: Path, entry: ManifestFile
) -> None:
    s3 = await clients.s3()
    part = await anyio.to_thread.run_sync(_PartFile, dest)
    try:
        with aws_errors(clients.settings, resource=bucket):
            try:
                response = await s3.get_object(Bucket=bucket, Key=key)
            except ClientError as exc:
                if not _is_missing(exc):
                    raise
                raise ModelIntegrityError(
                    f"{entry.path} is listed in the manifest but s3://{bucket}/{key} does not "
                    "exist; push the model again"
                ) from None
            with closing(response["Body"]) as body:
                async for chunk in body.iter_chunks(CHUNK_BYTES):
                    if part.size + len(chunk) > entry.size:  # bounded by the manifest's promise
                        raise _mismatch(entry, bucket, key, f"more than {entry.size} bytes")
                    await anyio.to_thread.run_sync(part.write, chunk)
        digest = await anyio.to_thread.run_sync(part.finish)
        if (part.size, digest) != (entry.size, entry.sha256):
            raise _mismatch(entry, bucket, key, f"sha256 {digest} ({part.size} bytes)")
        await anyio.to_thread.run_sync(part.commit, dest)
    finally:
        await anyio.to_thread.run_sync(part.discard)


def _mismatch(entry: ManifestFile, bucket: str, key: str, got: str) -> ModelIntegrityError:
    return ModelIntegrityError(
        f"{entry.path} from s3://{bucket}/{key} does not match its manifest: expected sha256 "
        f"{entry.sha256} ({entry.size} bytes), got {got}; the object changed after it was "
        "pushed: push the model again"
    )


class _PartFile:
    """A hidden temporary file beside its destination, hashed as it is written."""

    def __init__(self, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        self.path = Path(name)
        self._file = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256()
        self._committed = False
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self._file.write(chunk)
        self._hash.update(chunk)
        self.size += len(chunk)

    def finish(self) -> str:
        """Flush to disk (a renamed file must be whole after a crash) and return the digest."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        return self._hash.hexdigest()

    def commit(self, dest: Path) -> None:
        os.replace(self.path, dest)
        self._committed = True

    def discard(self) -> None:
        """Close and remove the temporary file, unless it was committed (safe to repeat)."""
        self._file.close()
        if not self._committed:
            self.path.unlink(missing_ok=True)


def _write_atomically(dest: Path, data: bytes) -> None:
    part = _PartFile(dest)
    try:
        part.write(data)
        part.finish()
        part.commit(dest)
    finally:
        part.discard()


# -- list ------------------------------------------------------------------------------------


async def list_models(clients: AwsClients, bucket: str) -> list[ModelVersion]:
    """Every completely pushed version, by model name, oldest first."""
    s3 = await clients.s3()
    pushed: list[tuple[str, datetime, str]] = []
    with_latest: list[str] = []
    with aws_errors(clients.settings, resource=bucket):
        async for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                parts = obj["Key"].split("/")
                if len(parts) == 3 and parts[2] == MANIFEST_NAME:
                    pushed.append((parts[0], obj["LastModified"], parts[1]))
                elif len(parts) == 2 and parts[1] == LATEST:
                    with_latest.append(parts[0])
    latest: dict[str, str] = {}
    for name in with_latest:
        raw = await _read(clients, bucket, latest_key(name))
        if raw is not None:
            latest[name] = raw.decode("utf-8", errors="replace").strip()
    return [
        ModelVersion(name, version, latest.get(name) == version)
        for name, _, version in sorted(pushed)
    ]


# -- helpers ---------------------------------------------------------------------------------


def check_safetensors(path: Path) -> None:
    """Refuse a file that does not parse as safetensors (say, a pickle renamed ``.safetensors``).

    Only the header is read, through the safetensors library, which never unpickles.
    """
    try:
        with safe_open(str(path), framework="numpy"):
            pass
    except (SafetensorError, OSError) as exc:
        raise ModelRefused(
            f"{path.name} is not a valid safetensors file ({exc}); refusing it: Conveyor "
            "loads only safetensors weights and never unpickles"
        ) from exc


def _digest(path: Path) -> tuple[int, str]:
    with path.open("rb") as file:
        digest = hashlib.file_digest(file, "sha256").hexdigest()
        return file.tell(), digest


async def _read(clients: AwsClients, bucket: str, key: str) -> bytes | None:
    """A small object's body, or None when there is no such key."""
    s3: S3Client = await clients.s3()
    with aws_errors(clients.settings, resource=bucket):
        try:
            response = await s3.get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if _is_missing(exc):
                return None
            raise
        async with response["Body"] as body:
            return await body.read()


def _is_missing(exc: ClientError) -> bool:
    return str(exc.response.get("Error", {}).get("Code", "")) in _MISSING
