"""Model handlers: the registry of kinds, device choice, the tiny test model, manifest paths."""

from __future__ import annotations

import json
import math
import pickle
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from services.infer import handlers
from services.infer.embedding import _chunks
from services.infer.errors import (
    ModelIntegrityError,
    ModelLoadError,
    ModelRefused,
    UnknownModelKind,
)
from services.infer.handlers import (
    choose_device,
    import_handler_modules,
    known_kinds,
    load_handler,
    register,
)
from services.infer.manifest import Manifest, ManifestFile, parse_manifest
from services.infer.registry import check_safetensors
from shared.errors import ConfigError
from tests.conftest import PYTHON, subprocess_env
from tests.models import TINY_KIND, make_tiny_model

CPU = torch.device("cpu")
DIGEST = "0" * 64


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return make_tiny_model(tmp_path / "tiny")


# -- the registry of kinds -------------------------------------------------------------------


def test_the_registry_side_does_not_import_torch() -> None:
    """The CLI and the registry stay light: torch costs seconds to import."""
    code = (
        "import sys, services.infer.registry, conveyor.cli.models; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([PYTHON, "-c", code], env=subprocess_env({}), check=True, timeout=60)


def test_builtin_and_test_kinds_are_known() -> None:
    assert {"sentence-embedding", TINY_KIND} <= set(import_handler_modules(["tests.models"]))


def test_unknown_kind_names_the_known_ones(tiny: Path) -> None:
    with pytest.raises(UnknownModelKind, match="no handler for model kind 'nope'") as caught:
        load_handler("nope", tiny, CPU)
    assert "sentence-embedding" in str(caught.value)
    assert TINY_KIND in str(caught.value)
    assert "INFER_HANDLER_MODULES" in str(caught.value)


def test_a_module_that_cannot_be_imported_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="INFER_HANDLER_MODULES names 'no_such_module_xyz'"):
        import_handler_modules(["no_such_module_xyz"])


def test_a_taken_kind_cannot_be_registered_by_another_factory() -> None:
    def other(directory: Path, device: torch.device) -> handlers.ModelHandler:
        raise AssertionError("never called")

    with pytest.raises(ValueError, match="already registered"):
        register(TINY_KIND)(other)
    assert TINY_KIND in known_kinds()


def test_a_failing_factory_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="could not load"):
        load_handler(TINY_KIND, tmp_path, CPU)  # no config.json there


# -- device choice ---------------------------------------------------------------------------


def test_cpu_is_always_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert choose_device("cpu") == CPU


def test_auto_takes_cuda_when_present(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert choose_device("auto").type == "cuda"
    assert choose_device("cuda").type == "cuda"


def test_auto_falls_back_to_cpu_and_cuda_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_device("auto") == CPU
    with pytest.raises(ConfigError, match="INFER_DEVICE=cuda but no CUDA device"):
        choose_device("cuda")


# -- the tiny model --------------------------------------------------------------------------


def test_tiny_model_is_deterministic(tmp_path: Path) -> None:
    texts = ["hello world", "a b c d e", "hello world", ""]
    one = load_handler(TINY_KIND, make_tiny_model(tmp_path / "a"), CPU)
    two = load_handler(TINY_KIND, make_tiny_model(tmp_path / "b"), CPU)
    other = load_handler(TINY_KIND, make_tiny_model(tmp_path / "c", seed=1), CPU)
    vectors = one.predict(texts)
    assert vectors == two.predict(texts)
    assert vectors != other.predict(texts)
    assert vectors[0] == vectors[2]
    assert vectors[0] != vectors[1]
    assert [len(v) for v in vectors] == [16] * 4
    for vector in vectors[:3]:
        assert math.isclose(math.fsum(x * x for x in vector), 1.0, rel_tol=1e-5)
    assert one.predict([texts[1], texts[0]]) == [vectors[1], vectors[0]]  # order kept
    assert one.predict([]) == []
    assert [one.cost(t) for t in texts] == [2, 5, 2, 1]


def test_tiny_model_refuses_the_whole_batch_on_its_marker(tmp_path: Path) -> None:
    handler = load_handler(TINY_KIND, make_tiny_model(tmp_path / "m", fail_marker="BOOM"), CPU)
    with pytest.raises(ValueError, match="model refused input containing BOOM"):
        handler.predict(["fine", "this one says BOOM", "fine too"])
    assert len(handler.predict(["__FAIL__ is not this model's marker"])) == 1


class _Trap:
    """Unpickling this creates ``path``: proof that something unpickled it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (Path.touch, (self.path,))


def test_a_pickle_named_safetensors_is_refused_unopened(tiny: Path, tmp_path: Path) -> None:
    sprung = tmp_path / "unpickled"
    (tiny / "model.safetensors").write_bytes(pickle.dumps({"weight": _Trap(sprung)}))
    with pytest.raises(ModelRefused, match="not a valid safetensors file"):
        check_safetensors(tiny / "model.safetensors")
    with pytest.raises(ModelLoadError, match="could not load"):
        load_handler(TINY_KIND, tiny, CPU)
    assert not sprung.exists()


# -- the built-in handler's chunking ---------------------------------------------------------


def test_chunks_keep_similar_lengths_together() -> None:
    lengths = [3, 256, 4, 7, 100, 5, 12, 6]
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    chunks = list(_chunks(order, lengths))
    assert sorted(i for chunk in chunks for i in chunk) == list(range(len(lengths)))
    for chunk in chunks:
        sizes = [lengths[i] for i in chunk]
        assert max(sizes) <= 2 * min(sizes)
    assert list(_chunks([], [])) == []


# -- manifest paths --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "../escape",
        "a/../../b",
        "/etc/passwd",
        "a//b",
        "./model.safetensors",
        "dir/",
        "a\\b",
        "",
        "manifest.json",
        "pytorch_model.bin",
        "weights/model.PT",
        "model.pkl",
        "trainer.ckpt",
    ],
)
def test_unsafe_paths_are_refused(path: str) -> None:
    with pytest.raises(ValidationError, match=r"not allowed|reserved|pickled weights"):
        ManifestFile(path=path, sha256=DIGEST, size=1)
    raw = _manifest_json([{"path": path, "sha256": DIGEST, "size": 1}])
    with pytest.raises(ModelRefused, match="refusing the manifest at s3://b/k"):
        parse_manifest(raw, source="s3://b/k")


@pytest.mark.parametrize("path", ["model.safetensors", "1_Pooling/config.json", "a.b/c-d_e"])
def test_relative_paths_are_accepted(path: str) -> None:
    manifest = parse_manifest(
        _manifest_json([{"path": path, "sha256": DIGEST, "size": 1}]), source="x"
    )
    assert manifest.files[0].path == path
    assert parse_manifest(manifest.to_json(), source="x") == manifest


def test_a_damaged_manifest_is_an_integrity_error() -> None:
    with pytest.raises(ModelIntegrityError, match="not valid"):
        parse_manifest(b"{not json", source="s3://b/k")
    twice = [{"path": "a", "sha256": DIGEST, "size": 1}] * 2
    with pytest.raises(ModelIntegrityError, match="more than once"):
        parse_manifest(_manifest_json(twice), source="s3://b/k")
    with pytest.raises(ModelIntegrityError, match="sha256"):
        parse_manifest(_manifest_json([{"path": "a", "sha256": "xyz", "size": 1}]), source="k")


def test_a_manifest_is_frozen_and_versioned() -> None:
    manifest = Manifest(name="m", version="1", kind="k", files=(), created_at=datetime.now(UTC))
    assert manifest.schema_version == 1
    with pytest.raises(ValidationError):
        manifest.version = "2"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="version"):
        Manifest(name="m", version="1/2", kind="k", files=(), created_at=datetime.now(UTC))


def _manifest_json(files: list[dict[str, object]]) -> bytes:
    return json.dumps(
        {
            "schema_version": 1,
            "name": "m",
            "version": "1",
            "kind": "k",
            "files": files,
            "created_at": "2026-11-01T00:00:00Z",
        }
    ).encode()
