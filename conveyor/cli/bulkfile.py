"""The files of ``conveyor submit --file``: what an input line holds, what an output line says,
and how a rerun knows what is done.

Input: JSON Lines (UTF-8), one item per line, in any of three forms::

    "a text"                                  one text
    {"text": "a text", "id": "doc-1"}         one text; ``id`` (optional, any JSON) is echoed
    {"inputs": ["a", "b"], "id": 7}           several texts: one output each, one job

Blank lines are skipped. Lines are numbered from 1 as in the file (blank ones counted), and
the whole file is checked before anything is submitted.

Output: JSON Lines, one line per input line, in input order::

    {"line": 1, "id": "doc-1", "status": "succeeded", "job_id": "...", "outputs": [[0.1, ...]],
     "error": null}
    {"line": 2, "status": "failed", "job_id": "...", "outputs": null, "error": "..."}

``id`` is present only when the input line had one. ``status`` is ``succeeded``, ``failed``
or ``cancelled`` (``job_id`` null when the API refused the job, e.g. a text over its limit).

Jobs: consecutive lines are packed into jobs of at most ``texts_per_job`` texts (a line is never
split; a line with more texts is a job of its own). Each job's ``Idempotency-Key`` is derived
from the file's SHA-256, the model, the callback URL, ``texts_per_job`` and the job's first line
number, so a rerun with the same file and options names the same jobs: a job submitted before
is re-attached (the API answers with the first job), never recorded twice.

Resuming: the lines already in the output file are skipped; a job is submitted (or re-attached)
only for lines not there. A last line cut short by a kill is removed before appending.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from conveyor.client import ConveyorError, Job, JobInput

__all__ = [
    "KEY_PREFIX",
    "BulkFileError",
    "Group",
    "Line",
    "plan",
    "read_done",
    "read_lines",
    "row",
    "rows",
]

_NO_ID: Final = object()
KEY_PREFIX: Final = "conveyor-bulk"


class BulkFileError(ConveyorError):
    """An input or output file that cannot be used: the message names the file and line."""


@dataclass(frozen=True)
class Line:
    number: int
    inputs: tuple[str, ...]
    id: Any = _NO_ID

    @property
    def has_id(self) -> bool:
        return self.id is not _NO_ID


@dataclass(frozen=True)
class Group:
    """The lines that travel in one job."""

    lines: tuple[Line, ...]
    key: str

    @property
    def job(self) -> JobInput:
        return JobInput([text for line in self.lines for text in line.inputs], self.key)


def read_lines(path: Path) -> tuple[str, list[Line]]:
    """The file's SHA-256 and its items; BulkFileError naming the first bad line."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BulkFileError(f"cannot read {path}: {exc.strerror or exc}") from exc
    digest = hashlib.sha256(data).hexdigest()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BulkFileError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from exc
    lines = []
    for number, raw in enumerate(text.splitlines(), 1):
        if raw.strip():
            lines.append(_parse(path, number, raw))
    if not lines:
        raise BulkFileError(f"{path}: no input lines")
    return digest, lines


def _parse(path: Path, number: int, raw: str) -> Line:
    def bad(why: str) -> BulkFileError:
        return BulkFileError(
            f'{path}:{number}: {why}; expected "text", {{"text": ...}} or {{"inputs": [...]}}'
        )

    try:
        item = json.loads(raw)
    except ValueError as exc:
        raise bad(f"not JSON ({exc})") from None
    if isinstance(item, str):
        return Line(number, (item,))
    if not isinstance(item, dict):
        raise bad(f"a JSON {type(item).__name__}")
    unknown = set(item) - {"text", "inputs", "id"}
    if unknown or ("text" in item) == ("inputs" in item):
        raise bad(f"keys {sorted(item)}")
    if "text" in item:
        if not isinstance(item["text"], str):
            raise bad('"text" is not a string')
        inputs: tuple[str, ...] = (item["text"],)
    else:
        texts = item["inputs"]
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise bad('"inputs" is not a non-empty list of strings')
        inputs = tuple(texts)
    return Line(number, inputs, item.get("id", _NO_ID))


def plan(
    lines: Sequence[Line],
    *,
    digest: str,
    model: str,
    callback_url: str | None,
    texts_per_job: int,
) -> list[Group]:
    """The jobs of the whole file, the same on every run with the same file and options."""
    if texts_per_job < 1:
        raise ValueError("texts_per_job must be at least 1")
    identity = json.dumps([digest, model, callback_url, texts_per_job])
    base = hashlib.sha256(identity.encode()).hexdigest()[:32]
    groups: list[Group] = []
    current: list[Line] = []

    def close() -> None:
        if current:
            groups.append(Group(tuple(current), f"{KEY_PREFIX}-{base}-{current[0].number}"))
            current.clear()

    for line in lines:
        if current and sum(len(x.inputs) for x in current) + len(line.inputs) > texts_per_job:
            close()
        current.append(line)
    close()
    return groups


def read_done(path: Path) -> dict[int, str]:
    """The line numbers the output file already holds, with their status. A last line
    without its newline (a write cut short) is removed, so that appending starts afresh."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise BulkFileError(f"cannot read {path}: {exc.strerror or exc}") from exc
    complete = data.rfind(b"\n") + 1
    if complete < len(data):
        with path.open("rb+") as fh:
            fh.truncate(complete)
            os.fsync(fh.fileno())
    done: dict[int, str] = {}
    for number, raw in enumerate(data[:complete].decode("utf-8", "replace").splitlines(), 1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
            done[int(record["line"])] = str(record["status"])
        except (ValueError, KeyError, TypeError):
            raise BulkFileError(
                f"{path}:{number}: not a line of `conveyor submit --file` output; "
                "choose another --out"
            ) from None
    return done


def rows(group: Group, outcome: Job | ConveyorError, skip: Iterable[int]) -> list[dict[str, Any]]:
    """The output lines of ``group``'s lines not in ``skip``."""
    skipped = set(skip)
    result: list[dict[str, Any]] = []
    start = 0
    for line in group.lines:
        count = len(line.inputs)
        if line.number not in skipped:
            result.append(row(line, outcome, start, count))
        start += count
    return result


def row(line: Line, outcome: Job | ConveyorError, start: int, count: int) -> dict[str, Any]:
    """One output line: ``outcome``'s outputs ``start:start+count`` belong to ``line``."""
    out: dict[str, Any] = {"line": line.number}
    if line.has_id:
        out["id"] = line.id
    if isinstance(outcome, Job):
        outputs = None
        if outcome.outputs is not None:
            outputs = [_floats(v) for v in outcome.outputs[start : start + count]]
        out.update(
            status=outcome.status.value, job_id=outcome.id, outputs=outputs, error=outcome.error
        )
    else:
        out.update(status="failed", job_id=None, outputs=None, error=str(outcome))
    return out


def _floats(vector: Any) -> list[float]:
    return [float(x) for x in vector]
