"""A tiny model kind for fast tests: ``test-tiny-embedding``, registered on import.

Tokens are whitespace-separated words hashed (crc32, stable across processes, unlike
``hash()``) into ``buckets`` rows of a random table saved as safetensors; the output is the
L2-normalised mean of their rows. An input containing ``fail_marker`` makes ``predict`` raise
for the whole batch, as a model that chokes on one input would; one containing
:data:`SLOW_MARKER` makes the call take :data:`SLOW_S` seconds, as a long job would.
"""

from __future__ import annotations

import json
import time
import zlib
from pathlib import Path
from typing import ClassVar

import torch
from safetensors.torch import load_file, save_file

from services.infer.handlers import register

__all__ = ["SLOW_MARKER", "SLOW_S", "TINY_KIND", "TinyEmbedding", "make_tiny_model"]

TINY_KIND = "test-tiny-embedding"
SLOW_MARKER = "__SLOW__"
SLOW_S = 2.0


def make_tiny_model(
    directory: Path,
    *,
    dim: int = 16,
    buckets: int = 1024,
    fail_marker: str = "__FAIL__",
    seed: int = 0,
) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``directory``; return it."""
    directory.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(buckets, dim, generator=generator)
    save_file({"weight": weight}, str(directory / "model.safetensors"))
    config = {"dim": dim, "buckets": buckets, "fail_marker": fail_marker}
    (directory / "config.json").write_text(json.dumps(config))
    return directory


@register(TINY_KIND)
class TinyEmbedding:
    kind: ClassVar[str] = TINY_KIND

    def __init__(self, directory: Path, device: torch.device) -> None:
        config = json.loads((directory / "config.json").read_text())
        self.buckets = int(config["buckets"])
        self.fail_marker = str(config.get("fail_marker", "__FAIL__"))
        self.device = device
        self.weight = load_file(str(directory / "model.safetensors"), device=str(device))["weight"]

    def _tokens(self, text: str) -> list[int]:
        return [zlib.crc32(word.encode()) % self.buckets for word in text.split()]

    def cost(self, text: str) -> int:
        return max(1, len(text.split()))

    def predict(self, inputs: list[str]) -> list[list[float]]:
        for text in inputs:
            if self.fail_marker in text:
                raise ValueError(f"model refused input containing {self.fail_marker}")
        if any(SLOW_MARKER in text for text in inputs):
            time.sleep(SLOW_S)  # the model thread, as a long call holds it
        ids: list[int] = []
        offsets: list[int] = []
        for text in inputs:
            offsets.append(len(ids))
            ids.extend(self._tokens(text))
        with torch.inference_mode():
            pooled = torch.nn.functional.embedding_bag(
                torch.tensor(ids, dtype=torch.long, device=self.device),
                self.weight,
                torch.tensor(offsets, dtype=torch.long, device=self.device),
                mode="mean",
            )
            vectors: list[list[float]] = (
                torch.nn.functional.normalize(pooled, p=2, dim=1).cpu().tolist()
            )
        return vectors
