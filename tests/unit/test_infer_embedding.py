"""The built-in handler's device path on the CPU: pinned memory only where it pays (CUDA), and
the optional ``torch.compile`` switch (INFER_COMPILE), on a tiny randomly initialised BERT
built the way ``benchmarks/gpu_check.py`` builds its MiniLM-shaped model."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from benchmarks.gpu_check import make_model_dir, sample_texts
from services.infer.embedding import COMPILE_WARM_UP, SentenceEmbedding, pins_memory
from services.infer.errors import ModelLoadError
from services.infer.handlers import compile_handler, load_handler
from shared.config import InferSettings, load_settings
from tests.models import TinyEmbedding, make_tiny_model

TINY_BERT = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "vocab_size": 256,
}
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tiny-bert")
    which = make_model_dir(directory, config=TINY_BERT)
    assert which.startswith("constructed")  # no tokenizer files given: one is made
    return directory


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_only_a_cuda_device_pins_memory() -> None:
    assert pins_memory(torch.device("cuda")) is True
    assert pins_memory(torch.device("cuda", 1)) is True
    assert pins_memory(CPU) is False


def test_on_the_cpu_inputs_are_plain_copies(bert_dir: Path) -> None:
    handler = load_handler("sentence-embedding", bert_dir, CPU)
    assert isinstance(handler, SentenceEmbedding)
    assert handler.pin_memory is False and handler.compiled is False
    batch = handler._tokenizer(["the quick fox", "a dog"], padding=True, return_tensors="pt")
    moved = handler._to_device(batch)
    assert set(moved) == set(batch)
    for name, tensor in moved.items():
        assert tensor.device.type == "cpu" and not tensor.is_pinned()
        assert torch.equal(tensor, batch[name])
    vectors = handler.predict(sample_texts(6))
    assert len(vectors) == 6 and all(len(v) == TINY_BERT["hidden_size"] for v in vectors)
    assert all(abs(_cosine(v, v) - 1) < 1e-5 for v in vectors)


@pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="pinned host memory and non-blocking copies need a CUDA device (none here)",
)
def test_on_cuda_inputs_travel_pinned_and_match_the_cpu(bert_dir: Path) -> None:
    cuda = load_handler("sentence-embedding", bert_dir, torch.device("cuda"))
    assert isinstance(cuda, SentenceEmbedding) and cuda.pin_memory is True
    moved = cuda._to_device(cuda._tokenizer(["the quick fox"], return_tensors="pt"))
    assert all(tensor.device.type == "cuda" for tensor in moved.values())
    texts = sample_texts(8)
    on_cpu = load_handler("sentence-embedding", bert_dir, CPU).predict(texts)
    for a, b in zip(cuda.predict(texts), on_cpu, strict=True):
        assert _cosine(a, b) > 0.99  # bf16 autocast on CUDA, fp32 on the CPU


def test_compile_traces_the_model_once_and_keeps_its_outputs(bert_dir: Path) -> None:
    handler = load_handler("sentence-embedding", bert_dir, CPU)
    assert isinstance(handler, SentenceEmbedding)
    texts = sample_texts(5)
    before = handler.predict(texts)
    torch._dynamo.reset()
    # "eager": TorchDynamo captures the graphs (dynamic shapes) without generating code, which
    # inductor (the default, INFER_COMPILE's) would take minutes for on two cores.
    handler.compile(backend="eager")
    assert handler.compiled is True
    model = handler._model
    assert isinstance(model, torch._dynamo.eval_frame.OptimizedModule)
    handler.compile(backend="eager")  # a second call changes nothing
    assert handler._model is model
    # infer calls predict in a worker thread (anyio.to_thread), not where compile() ran
    with ThreadPoolExecutor(1) as pool:
        after = pool.submit(handler.predict, texts).result(timeout=60)
    for a, b in zip(before, after, strict=True):
        assert _cosine(a, b) > 0.9999
    assert handler.predict([]).shape == (0, handler.dim)
    assert len(handler.predict(COMPILE_WARM_UP[1] * 3)) == 6


class _Compilable:
    kind: ClassVar[str] = "compilable"

    def __init__(self, error: Exception | None = None) -> None:
        self.calls = 0
        self.error = error

    def cost(self, text: str) -> int:
        return 1

    def predict(self, inputs: list[str]) -> list[list[float]]:
        return [[1.0] for _ in inputs]

    def compile(self) -> None:
        self.calls += 1
        if self.error is not None:
            raise self.error


def test_compile_handler_calls_compile_where_there_is_one(tmp_path: Path) -> None:
    handler = _Compilable()
    assert compile_handler(handler) is True and handler.calls == 1
    tiny = TinyEmbedding(make_tiny_model(tmp_path / "tiny"), CPU)  # no compile(): as it is
    assert compile_handler(tiny) is False


def test_a_failing_compile_is_a_load_error_that_names_the_switch() -> None:
    with pytest.raises(ModelLoadError, match=r"INFER_COMPILE.*compilable.*no C compiler"):
        compile_handler(_Compilable(RuntimeError("no C compiler")))


@pytest.mark.parametrize(("value", "expected"), [(None, False), ("true", True), ("0", False)])
def test_infer_compile_setting(
    clean_env: pytest.MonkeyPatch, value: str | None, expected: bool
) -> None:
    if value is not None:
        clean_env.setenv("INFER_COMPILE", value)
    settings = load_settings(InferSettings)
    assert settings.compile is expected
    assert InferSettings.env_variables()["INFER_COMPILE"] == "compile"
