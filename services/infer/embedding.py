"""The built-in ``sentence-embedding`` handler: all-MiniLM-L6-v2 and models shaped like it.

A sentence-transformers model directory (a BERT-style ``transformers`` model, its tokenizer,
mean pooling, L2 normalisation) is loaded with ``transformers`` directly: safetensors weights
only, local files only, no hub. The result matches ``SentenceTransformer.encode`` (cosine
> 0.999) without the package's extra start-up and its own batching, which infer does itself.

On CUDA the forward pass runs under bf16 autocast, and the token tensors are copied to the
device from pinned (page-locked) host memory without blocking. ``compile()`` (INFER_COMPILE)
wraps the model in ``torch.compile`` with dynamic shapes and compiles it at once, on warm-up
inputs, so that the first jobs do not wait for the compiler.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Final

import numpy as np
import numpy.typing as npt
import torch

from services.infer.errors import ModelLoadError
from services.infer.handlers import register
from services.infer.manifest import DEFAULT_MODEL_KIND, DEFAULT_MODEL_VERSION, default_model_dir

__all__ = [
    "DEFAULT_MODEL_KIND",
    "DEFAULT_MODEL_VERSION",
    "SentenceEmbedding",
    "default_model_dir",
]

MAX_CHUNK_TOKENS: Final = 16_384
"""Padded tokens in one forward pass: bounds activation memory for long inputs."""
MAX_LENGTH_RATIO: Final = 2
"""Inputs in one forward pass differ in length by at most this factor, so padding wastes at
most half of it; lengths 3..256 then need at most 7 passes."""
COMPILE_WARM_UP: Final = (
    ["warm up"],
    ["warm up the compiler", "with two inputs here"],
    ["and then with three", "inputs that are a bit", "longer than the others"],
)
"""Inputs that ``compile()`` runs once: batch size 1 (which torch.compile specialises) and two
dynamic-shape batches, so the graphs exist before the first job arrives."""


@register(DEFAULT_MODEL_KIND)
class SentenceEmbedding:
    """Mean-pooled, L2-normalised token embeddings of a ``transformers`` encoder."""

    kind: ClassVar[str] = DEFAULT_MODEL_KIND

    def __init__(self, directory: Path, device: torch.device) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: never reach a hub
        import transformers
        from transformers import AutoModel, AutoTokenizer

        transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        directory = Path(directory)
        _check_pooling(directory)
        self.device = device
        self.pin_memory = pins_memory(device)
        """Whether inputs travel through pinned host memory with non-blocking copies."""
        self.compiled = False
        self._tokenizer: Any = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        # cost() runs on the event loop while predict() runs in a worker thread; a fast
        # tokenizer is one Rust object that fails under concurrent use with different
        # truncation/padding settings ("Already borrowed"), so each side has its own.
        self._cost_tokenizer: Any = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        model: Any = AutoModel.from_pretrained(
            directory, use_safetensors=True, local_files_only=True, trust_remote_code=False
        )
        self._model: Any = model.to(device).eval()
        self.dim: int = int(model.config.hidden_size)
        self.max_length = _max_length(directory, self._tokenizer, model.config)

    def compile(self, *, backend: str = "inductor", mode: str | None = None) -> None:
        """Wrap the model in ``torch.compile`` (dynamic shapes: batch sizes and lengths vary
        from call to call) and compile it now, on :data:`COMPILE_WARM_UP`. Slower to start
        (seconds to minutes), faster per call where the model's Python overhead shows: small
        batches on a GPU. ``backend="eager"`` traces without generating code (tests)."""
        if self.compiled:
            return
        self._model = torch.compile(self._model, backend=backend, mode=mode, dynamic=True)
        self.compiled = True
        for inputs in COMPILE_WARM_UP:
            self.predict(inputs)

    def cost(self, text: str) -> int:
        return len(
            self._cost_tokenizer(text, truncation=True, max_length=self.max_length)["input_ids"]
        )

    def predict(self, inputs: list[str]) -> npt.NDArray[np.float32]:
        vectors = np.empty((len(inputs), self.dim), dtype=np.float32)
        if not inputs:
            return vectors
        encoded = self._tokenizer(inputs, truncation=True, max_length=self.max_length)
        lengths = [len(ids) for ids in encoded["input_ids"]]
        order = sorted(range(len(inputs)), key=lengths.__getitem__)
        for chunk in _chunks(order, lengths):
            vectors[chunk] = self._encode([inputs[i] for i in chunk])
        return vectors

    def _encode(self, texts: list[str]) -> npt.NDArray[np.float32]:
        batch = self._to_device(
            self._tokenizer(
                texts,
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
        )
        with torch.inference_mode():
            with self._autocast():
                hidden = self._model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(torch.float32)
            pooled = (hidden.float() * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            normalised = torch.nn.functional.normalize(pooled, p=2, dim=1)
            result: npt.NDArray[np.float32] = normalised.cpu().numpy()
        return result

    def _to_device(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The tokenizer's tensors on the model's device. On CUDA through pinned memory: a
        non-blocking copy from page-locked memory is a DMA that returns at once, and the
        kernels queued after it on the same stream wait for it (torch's pinned-memory cache
        keeps the source alive until the copy has run)."""
        if not self.pin_memory:
            return {name: tensor.to(self.device) for name, tensor in batch.items()}
        return {
            name: tensor.pin_memory().to(self.device, non_blocking=True)
            for name, tensor in batch.items()
        }

    def _autocast(self) -> contextlib.AbstractContextManager[object]:
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()


def pins_memory(device: torch.device) -> bool:
    """Pinned host memory and non-blocking copies pay only for a CUDA device; on the CPU
    there is nothing to copy (and pinning needs a CUDA runtime)."""
    return device.type == "cuda"


def _chunks(order: list[int], lengths: list[int]) -> Iterator[list[int]]:
    """Split indices sorted by length into forward passes of similar lengths."""
    chunk: list[int] = []
    for index in order:
        length = lengths[index]
        if chunk and (
            length > MAX_LENGTH_RATIO * lengths[chunk[0]]
            or length * (len(chunk) + 1) > MAX_CHUNK_TOKENS
        ):
            yield chunk
            chunk = []
        chunk.append(index)
    if chunk:
        yield chunk


def _max_length(directory: Path, tokenizer: Any, config: Any) -> int:
    """sentence-transformers' ``max_seq_length`` (256 for MiniLM) when the model states one,
    else what the tokenizer and the position embeddings allow."""
    settings = _read_json(directory / "sentence_bert_config.json")
    if isinstance(settings.get("max_seq_length"), int):
        return int(settings["max_seq_length"])
    limits = [getattr(config, "max_position_embeddings", None), tokenizer.model_max_length]
    return min(int(limit) for limit in limits if isinstance(limit, int) and limit < 1_000_000)


def _check_pooling(directory: Path) -> None:
    """Refuse a model that declares a pooling other than the mean this handler computes."""
    for module in _read_json(directory / "modules.json", default=[]):
        if str(module.get("type", "")).endswith(".Pooling"):
            pooling = _read_json(directory / str(module.get("path", "")) / "config.json")
            modes = {k for k, v in pooling.items() if k.startswith("pooling_mode_") and v}
            if modes and modes != {"pooling_mode_mean_tokens"}:
                raise ModelLoadError(
                    f"{directory} declares pooling {sorted(modes)}; the {DEFAULT_MODEL_KIND} "
                    "handler computes mean pooling only"
                )


def _read_json(path: Path, default: Any = None) -> Any:
    if not path.is_file():
        return {} if default is None else default
    return json.loads(path.read_text(encoding="utf-8"))
