"""``conveyor plan``: replicas from measured figures only, the arithmetic, and what it prints."""

from __future__ import annotations

import math

import pytest
from typer.testing import CliRunner

from conveyor.capacity import Figure, Load, Node, measured_figure, measured_figures, plan
from conveyor.cli.plan import plan as plan_command

FIGURE = Figure("m", "gpu", texts_per_s=1000.0, batch_size=32, source="test")
NODE = Node("g5.xlarge", 1.0, "test")


def run(*args: str) -> tuple[int, str]:
    import typer

    app = typer.Typer()
    app.command()(plan_command)
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_replicas_cover_the_load_at_the_utilisation_target() -> None:
    result = plan(Load(jobs_per_s=100, texts_per_job=4), FIGURE, NODE, utilisation=0.5)
    assert result.infer_replicas == 1  # 400 texts/s <= 500 per replica
    result = plan(Load(jobs_per_s=5000, texts_per_job=1), FIGURE, NODE, utilisation=0.5)
    assert result.infer_replicas == result.nodes == 10
    assert result.usd_per_month == pytest.approx(10 * 1.0 * 730)
    tiny = plan(Load(jobs_per_s=0.01, texts_per_job=1), FIGURE, NODE)
    assert tiny.infer_replicas == 1


@pytest.mark.parametrize(
    ("load", "utilisation"), [(Load(0, 1), 0.6), (Load(1, 0), 0.6), (Load(1, 1), 0.0)]
)
def test_nonsense_is_refused(load: Load, utilisation: float) -> None:
    with pytest.raises(ValueError, match=r"above zero|utilisation"):
        plan(load, FIGURE, NODE, utilisation=utilisation)


def test_recorded_figures_are_measured_cpu_figures_and_no_gpu_one() -> None:
    data = measured_figures()
    assert "CPU figures from the 2-core development machine" in data["about"]
    assert "No GPU figure has been measured yet" in data["about"]
    assert {f["device"] for f in data["figures"]} == {"cpu"}
    for figure in data["figures"]:
        assert figure["command"].startswith("python -m benchmarks.model_throughput")
        assert "2 CPU cores" in figure["machine"]
    assert measured_figure("all-minilm-l6-v2", "gpu", 32) is None
    cpu = measured_figure("all-minilm-l6-v2", "cpu", 32)
    assert cpu is not None and cpu.batch_size == 32
    smaller = measured_figure("all-minilm-l6-v2", "cpu", 16)  # largest batch not above 16
    assert smaller is not None and smaller.batch_size == 8


def test_gpu_needs_a_figure_of_your_own() -> None:
    code, output = run("--rate", "100")
    assert code == 2
    assert "no GPU throughput has been measured" in output
    code, output = run("--rate", "100", "--replica-texts-per-s", "2000")
    assert code == 0, output
    assert "given with --replica-texts-per-s" in output


def test_cpu_plan_prints_replicas_cost_and_assumptions() -> None:
    cpu = measured_figure("all-minilm-l6-v2", "cpu", 32)
    assert cpu is not None
    code, output = run("--rate", "5000", "--texts-per-job", "1", "--device", "cpu")
    assert code == 0, output
    replicas = math.ceil(5000 / (cpu.texts_per_s * 0.6))
    assert f"infer replicas   {replicas:>6}" in output
    assert "measured on 2 CPU cores" in output
    assert "Assumptions:" in output and "not included:" in output


def test_more_gpus_than_rendered_says_how_to_render() -> None:
    code, output = run("--rate", "5000", "--replica-texts-per-s", "500")
    assert code == 0, output
    assert "conveyor render kubernetes --max-gpus 17" in output
