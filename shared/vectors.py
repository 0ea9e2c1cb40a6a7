"""Output vectors packed as float32: little-endian, one vector after another.

A vector of 384 numbers is 1.5 KiB packed (2 KiB in base64) against about 8 KiB as JSON
text, and packing or unpacking it parses and prints no number. infer packs what the model
returned, the results message carries the bytes in base64, persist stores them as they came
(``results.vectors``, bytea), and the numbers become text only where someone reads them: the
API's default ``encoding_format=float`` and the webhook. The API's ``encoding_format=base64``
hands out the packed bytes of each vector, the layout of OpenAI's embeddings API.

Results written before packing (``results.outputs``, jsonb) stay readable: :func:`stored`
packs them on the way out.

The standard library's ``array`` rather than numpy: ingest, persist and notify run in images
without numpy, and ``array`` converts in C all the same.
"""

from __future__ import annotations

import array
import base64
import json
import sys
from collections.abc import Sequence
from typing import Final

__all__ = ["ITEM_BYTES", "check", "pack", "rows_base64", "stored", "unpack"]

ITEM_BYTES: Final = 4
"""float32."""
_SWAP: Final = sys.byteorder != "little"


def pack(rows: Sequence[Sequence[float]]) -> tuple[bytes, int]:
    """Vectors given as numbers, packed: ``(data, dim)``. Values are rounded to float32 (what
    the model computed in; a float32's value survives the round trip exactly)."""
    dim = len(rows[0]) if rows else 0
    if dim == 0 or any(len(row) != dim for row in rows):
        raise ValueError("expected one or more vectors, all of the same non-zero length")
    values = array.array("f")
    for row in rows:
        values.extend(row)
    if _SWAP:
        values.byteswap()
    return values.tobytes(), dim


def unpack(data: bytes, dim: int) -> list[list[float]]:
    """The vectors of ``data`` as lists of numbers (float32 values, as Python floats)."""
    check(data, dim)
    values = array.array("f")
    values.frombytes(data)
    if _SWAP:
        values.byteswap()
    flat = values.tolist()
    return [flat[start : start + dim] for start in range(0, len(flat), dim)]


def rows_base64(data: bytes, dim: int) -> list[str]:
    """Each vector of ``data`` as the base64 of its packed bytes."""
    check(data, dim)
    step = dim * ITEM_BYTES
    return [
        base64.b64encode(data[start : start + step]).decode("ascii")
        for start in range(0, len(data), step)
    ]


def stored(
    vectors: bytes | None, dimensions: int | None, outputs_json: str | None
) -> tuple[bytes, int] | None:
    """A ``results`` row's outputs, packed: its ``vectors`` and ``dimensions``, or, for a row
    written before packing, its ``outputs`` (jsonb read as text); None when it has neither."""
    if vectors is not None and dimensions is not None:
        return bytes(vectors), dimensions
    if outputs_json is None:
        return None
    rows = json.loads(outputs_json)
    return pack(rows) if rows else None


def check(data: bytes, dim: int) -> None:
    """Raise ValueError unless ``data`` is one or more whole vectors of ``dim`` numbers."""
    if dim < 1 or not data or len(data) % (dim * ITEM_BYTES):
        raise ValueError(
            f"{len(data)} bytes are not whole vectors of {dim} float32 ({ITEM_BYTES} bytes each)"
        )
