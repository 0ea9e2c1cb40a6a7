"""Small promises of the repository to its users: entry points and ignored files."""

from __future__ import annotations

import subprocess

from tests.conftest import PYTHON, REPO, subprocess_env


def test_python_m_emulator_help_shows_its_own_usage() -> None:
    result = subprocess.run(
        [PYTHON, "-m", "emulator", "--help"],
        env={**subprocess_env({}), "COLUMNS": "100"},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "Usage: python -m emulator [OPTIONS]" in result.stdout
    assert "--env-file" in result.stdout
    assert "submit" not in result.stdout  # not the whole `conveyor` command's help


def test_the_readmes_env_file_is_ignored_by_git() -> None:
    result = subprocess.run(
        ["git", "check-ignore", "--no-index", ".stack.env"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, "`.stack.env` holds keys: it must be in .gitignore"
