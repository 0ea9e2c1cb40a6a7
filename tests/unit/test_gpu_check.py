"""benchmarks/gpu_check's pieces that can go wrong away from a GPU: the batch sizes, the texts,
and the wheel list of gpu_wheels.sh, which must hold everything infer's model path imports that
a GPU machine lacks (it cannot download there)."""

from __future__ import annotations

import json
import re
import subprocess
from importlib.metadata import PackageNotFoundError, distributions, requires
from pathlib import Path

from packaging.requirements import Requirement

from benchmarks.gpu_check import MINILM_CONFIG, batch_sizes, sample_texts
from tests.conftest import REPO, run_python, subprocess_env

PREINSTALLED = (
    "torch",
    "transformers",
    "sentence-transformers",
    "anyio",
    "httpx",
    "prometheus-client",
)
"""What FACTS.md says a GPU machine's Python has (with their own requirements)."""
OPTIONAL = {"psutil"}
"""Imported where present, not needed: opentelemetry-sdk reads host facts with it."""
INFER_MODEL_PATH = "services.infer.embedding, services.infer.runner, services.infer.handlers"


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(names: tuple[str, ...]) -> set[str]:
    """The distributions ``names`` install, as installed here (no extras)."""
    seen: set[str] = set()
    todo = [_normalise(name) for name in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            needs = requires(name) or []
        except PackageNotFoundError:
            continue
        for spec in needs:
            requirement = Requirement(spec)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(_normalise(requirement.name))
    return seen


def _carried() -> set[str]:
    script = (REPO / "benchmarks" / "gpu_wheels.sh").read_text(encoding="utf-8")
    match = re.search(r"^packages=\(([^)]*)\)", script, re.MULTILINE)
    assert match, "gpu_wheels.sh has no packages=(...) list"
    return {_normalise(name) for name in match.group(1).split()}


def _owners(files: set[str]) -> set[str]:
    """The installed distributions that own ``files`` (by their RECORD)."""
    owners: set[str] = set()
    for dist in distributions():
        for entry in dist.files or ():
            if str(entry.locate()) in files:
                owners.add(_normalise(dist.metadata["Name"]))
                break
    return owners


def test_the_wheels_carry_what_infers_model_path_imports() -> None:
    code = (
        "import json, sys; import " + INFER_MODEL_PATH + "; "
        "print(json.dumps(sorted({str(getattr(m, '__file__', None)) "
        "for m in list(sys.modules.values())})))"
    )
    result = run_python(code, timeout=120, check=True)
    imported = _owners(set(json.loads(result.stdout)))
    missing = imported - _closure(PREINSTALLED) - _carried() - OPTIONAL - {"conveyor"}
    assert missing == set(), "add these to gpu_wheels.sh's packages"
    assert {"pydantic", "opentelemetry-sdk"} <= imported  # the check sees them


def test_batch_sizes_double_up_to_the_largest() -> None:
    assert batch_sizes(1024) == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
    assert batch_sizes(8) == [1, 2, 4, 8]
    assert batch_sizes(6) == [1, 2, 4, 6]
    assert batch_sizes(1) == [1]


def test_texts_are_distinct_and_about_ten_words() -> None:
    texts = sample_texts(500)
    assert len(set(texts)) == 500
    assert {len(text.split()) for text in texts} <= set(range(8, 13))
    assert texts == sample_texts(500)  # the same texts for every row and run


def test_the_model_has_minilms_shape() -> None:
    assert {
        key: MINILM_CONFIG[key]
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads")
    } == {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12}
    assert (MINILM_CONFIG["intermediate_size"], MINILM_CONFIG["vocab_size"]) == (1536, 30522)


def test_the_driver_refuses_bad_settings() -> None:
    result = subprocess.run(
        ["bash", str(Path("benchmarks") / "gpu_check.sh")],
        cwd=REPO,
        env=subprocess_env({"GPU_CHECK_DEVICE": "tpu"}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "GPU_CHECK_DEVICE=tpu: cuda or cpu" in result.stderr
