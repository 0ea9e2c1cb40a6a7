"""Packed output vectors: the bytes, the message field, and infer's conversion of a handler's
outputs."""

from __future__ import annotations

import base64
import datetime
import json
import struct

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from services.infer.runner import as_matrix, packed
from shared import vectors
from shared.messages import Envelope, JobResult, JobStatus, MessageType, Vectors, decode_envelope

NOW = datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)
ROWS = [[0.5, -0.25, 3.0], [1.0, 0.0, -1.5]]


def test_packed_is_little_endian_float32_one_vector_after_another() -> None:
    data, dim = vectors.pack(ROWS)
    assert dim == 3
    assert data == struct.pack("<6f", *ROWS[0], *ROWS[1])
    assert vectors.unpack(data, dim) == ROWS
    assert vectors.rows_base64(data, dim) == [
        base64.b64encode(struct.pack("<3f", *row)).decode() for row in ROWS
    ]


def test_numbers_are_rounded_to_float32() -> None:
    (value,) = vectors.unpack(*vectors.pack([[0.1]]))[0]
    assert value == struct.unpack("<f", struct.pack("<f", 0.1))[0]
    assert value != 0.1


@pytest.mark.parametrize("rows", [[], [[]], [[1.0], [1.0, 2.0]]], ids=["none", "empty", "ragged"])
def test_only_whole_vectors_of_one_length_pack(rows: list[list[float]]) -> None:
    with pytest.raises(ValueError, match="same non-zero length"):
        vectors.pack(rows)


@pytest.mark.parametrize(("size", "dim"), [(0, 2), (12, 2), (8, 0)])
def test_bytes_that_are_not_whole_vectors_are_refused(size: int, dim: int) -> None:
    with pytest.raises(ValueError, match="not whole vectors"):
        vectors.unpack(b"\0" * size, dim)
    with pytest.raises(ValueError, match="not whole vectors"):
        vectors.rows_base64(b"\0" * size, dim)


def test_a_stored_row_is_read_packed_or_from_its_old_numbers() -> None:
    data, dim = vectors.pack(ROWS)
    assert vectors.stored(data, dim, None) == (data, dim)
    assert vectors.stored(memoryview(data), dim, None) == (data, dim)  # bytea may be a view
    assert vectors.stored(None, None, json.dumps(ROWS)) == (data, dim)
    assert vectors.stored(None, None, None) is None
    assert vectors.stored(None, None, "null") is None  # jsonb null, as an old failed row


def test_the_message_carries_base64_and_reads_it_back() -> None:
    result = JobResult(
        status=JobStatus.SUCCEEDED,
        model="m",
        vectors=Vectors.of(ROWS),
        started_at=NOW,
        finished_at=NOW,
    )
    payload = result.model_dump(mode="json")
    assert payload["vectors"] == {
        "dim": 3,
        "data": base64.b64encode(struct.pack("<6f", *ROWS[0], *ROWS[1])).decode(),
    }
    envelope = Envelope(
        type=MessageType.JOB_RESULT,
        job_id="00000000-0000-0000-0000-000000000001",
        tenant="t",
        payload=payload,
    )
    back = JobResult.model_validate(decode_envelope(envelope.model_dump_json()).payload)
    assert back == result
    assert back.vectors is not None
    assert (back.vectors.count, back.vectors.rows()) == (2, ROWS)


def test_a_result_from_an_older_infer_is_packed_the_same() -> None:
    old = JobResult(
        status=JobStatus.SUCCEEDED, model="m", outputs=ROWS, started_at=NOW, finished_at=NOW
    )
    assert old.packed() == Vectors.of(ROWS)
    failed = JobResult(status=JobStatus.FAILED, model="m", started_at=NOW, finished_at=NOW)
    assert failed.packed() is None


@pytest.mark.parametrize(
    ("vectors_field", "message"),
    [
        ({"dim": 3, "data": "not base64!"}, "not base64"),
        ({"dim": 3, "data": base64.b64encode(b"\0" * 8).decode()}, "not whole vectors"),
        ({"dim": 0, "data": base64.b64encode(b"\0" * 8).decode()}, "greater than or equal"),
        ({"dim": 2, "data": 42}, "expected base64 text"),
    ],
    ids=["not-base64", "partial-vector", "zero-dim", "not-text"],
)
def test_a_malformed_vectors_field_makes_the_message_poison(
    vectors_field: dict[str, object], message: str
) -> None:
    payload = {
        "status": "succeeded",
        "model": "m",
        "vectors": vectors_field,
        "started_at": NOW.isoformat(),
        "finished_at": NOW.isoformat(),
    }
    with pytest.raises(ValidationError, match=message):
        JobResult.model_validate(payload)


def test_infer_takes_arrays_tensors_and_lists_from_a_handler() -> None:
    expected = np.array(ROWS, dtype=np.float32)
    for given in (expected, torch.tensor(ROWS), ROWS, np.array(ROWS, dtype=np.float64)):
        matrix = as_matrix(given, 2)
        assert matrix.dtype == np.float32 and matrix.flags.c_contiguous
        np.testing.assert_array_equal(matrix, expected)
    # A job's rows are a slice of its batch's array; packing copies just those rows.
    batch = np.arange(12, dtype=np.float32).reshape(4, 3)
    assert packed(batch[1:3]) == Vectors.of(batch[1:3].tolist())


@pytest.mark.parametrize(
    ("given", "count", "message"),
    [
        ([[1.0], [1.0, 2.0]], 2, "not one vector per input"),
        ([[1.0, 2.0]], 2, r"shape \(1, 2\) for 2 inputs"),
        ([1.0, 2.0], 2, r"shape \(2,\) for 2 inputs"),
        ([[], []], 2, r"shape \(2, 0\)"),
        ([["a", "b"]], 1, "not one vector per input"),
    ],
    ids=["ragged", "too-few", "flat", "empty-vectors", "not-numbers"],
)
def test_outputs_that_are_not_one_vector_per_input_are_an_error(
    given: object, count: int, message: str
) -> None:
    with pytest.raises(RuntimeError, match=message):
        as_matrix(given, count)
