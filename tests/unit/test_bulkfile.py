"""The files of ``conveyor submit --file``: input forms, jobs and their keys, resuming, rows."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest

from conveyor import ApiError, Job, JobStatus
from conveyor.cli.bulkfile import BulkFileError, Line, plan, read_done, read_lines, rows


def write(tmp_path: Path, text: str, name: str = "in.jsonl") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def job(status: JobStatus, outputs: list[list[float]] | None) -> Job:
    now = datetime.datetime.now(datetime.UTC)
    return Job(
        id="j1",
        status=status,
        model="m",
        model_version="1",
        inputs_count=0 if outputs is None else len(outputs),
        created_at=now,
        started_at=None,
        finished_at=now,
        error=None if status is JobStatus.SUCCEEDED else "boom",
        outputs=None if outputs is None else tuple(outputs),
    )


def test_the_three_forms_and_blank_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '"plain"\n\n{"text": "one", "id": "doc-1"}\n  \n{"inputs": ["a", "b"], "id": 7}\n',
    )
    digest, lines = read_lines(path)
    assert len(digest) == 64
    assert [(line.number, line.inputs) for line in lines] == [
        (1, ("plain",)),
        (3, ("one",)),
        (5, ("a", "b")),
    ]
    assert [line.has_id for line in lines] == [False, True, True]
    assert [lines[1].id, lines[2].id] == ["doc-1", 7]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('"ok"\n{"text": 3}\n', '2: "text" is not a string'),
        ('"ok"\nnot json\n', "2: not JSON"),
        ("[1, 2]\n", "1: a JSON list"),
        ('{"text": "a", "inputs": ["b"]}\n', "1: keys ['inputs', 'text']"),
        ('{"txt": "a"}\n', "1: keys ['txt']"),
        ('{"inputs": []}\n', '1: "inputs" is not a non-empty list of strings'),
        ("\n\n", "no input lines"),
    ],
)
def test_a_bad_line_is_named(tmp_path: Path, text: str, why: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(BulkFileError) as raised:
        read_lines(path)
    assert why in str(raised.value)
    assert str(path) in str(raised.value)


def test_jobs_pack_lines_up_to_k_texts_and_never_split_a_line() -> None:
    lines = [
        Line(1, ("a",)),
        Line(2, ("b",)),
        Line(3, ("c", "d")),
        Line(5, ("e", "f", "g", "h", "i")),
        Line(6, ("j",)),
    ]
    groups = plan(lines, digest="d", model="m", callback_url=None, texts_per_job=3)
    assert [[line.number for line in g.lines] for g in groups] == [[1, 2], [3], [5], [6]]
    assert groups[0].job.inputs == ("a", "b")
    assert groups[2].job.inputs == ("e", "f", "g", "h", "i")
    single = plan(lines, digest="d", model="m", callback_url=None, texts_per_job=1)
    assert len(single) == 5


def test_keys_name_the_file_the_options_and_the_line() -> None:
    lines = [Line(1, ("a",)), Line(2, ("b",))]

    def keys(**change: object) -> list[str]:
        options: dict[str, object] = {
            "digest": "d",
            "model": "m",
            "callback_url": None,
            "texts_per_job": 1,
        }
        options.update(change)
        return [g.key for g in plan(lines, **options)]  # type: ignore[arg-type]

    first = keys()
    assert first == keys()  # a rerun names the same jobs
    assert len(set(first)) == 2
    assert all(k.startswith("conveyor-bulk-") and len(k) <= 255 for k in first)
    assert first[0].endswith("-1") and first[1].endswith("-2")
    for change in ({"digest": "e"}, {"model": "n"}, {"callback_url": "https://x"}):
        assert set(keys(**change)).isdisjoint(first), change
    assert keys(texts_per_job=2)[0] != first[0]


def test_read_done_knows_the_lines_and_drops_a_cut_last_line(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    assert read_done(out) == {}
    rows_text = [
        json.dumps({"line": 1, "status": "succeeded"}),
        json.dumps({"line": 3, "status": "failed"}),
    ]
    out.write_text("\n".join(rows_text) + '\n{"line": 4, "sta')
    assert read_done(out) == {1: "succeeded", 3: "failed"}
    assert out.read_text().endswith("}\n")  # the cut line is gone: appending starts afresh
    out.write_text("something else\n")
    with pytest.raises(BulkFileError, match="not a line of"):
        read_done(out)


def test_rows_slice_a_jobs_outputs_per_line_and_skip_done_lines() -> None:
    group = plan(
        [Line(1, ("a",)), Line(2, ("b", "c"), id="x"), Line(4, ("d",))],
        digest="d",
        model="m",
        callback_url=None,
        texts_per_job=4,
    )[0]
    done = job(JobStatus.SUCCEEDED, [[1.0], [2.0], [3.0], [4.0]])
    assert rows(group, done, skip={1}) == [
        {
            "line": 2,
            "id": "x",
            "status": "succeeded",
            "job_id": "j1",
            "outputs": [[2.0], [3.0]],
            "error": None,
        },
        {"line": 4, "status": "succeeded", "job_id": "j1", "outputs": [[4.0]], "error": None},
    ]
    failed = rows(group, job(JobStatus.FAILED, None), skip=())
    assert [(r["status"], r["error"], r["outputs"]) for r in failed] == [
        ("failed", "boom", None)
    ] * 3
    refused = rows(group, ApiError(422, {"error": "inputs[0]: too long"}), skip=())
    assert refused[0]["job_id"] is None
    assert refused[0]["error"] == "HTTP 422: inputs[0]: too long"
