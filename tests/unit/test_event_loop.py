"""EVENT_LOOP: every service on uvloop where it is installed, asyncio when asked."""

from __future__ import annotations

import pytest

from shared import service
from shared.errors import ConfigError
from tests.conftest import run_python

_SERVICE = """
import asyncio, sys
from shared.config import CommonSettings
from shared.service import main

class Settings(CommonSettings):
    pass

async def body(settings, stopping):
    print("loop:", type(asyncio.get_running_loop()).__module__)

sys.exit(main(Settings, body))
"""


def test_options_follow_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert service.loop_options("asyncio") == {}
    assert service.loop_options("auto") == {"use_uvloop": True}  # a dependency: installed
    assert service.loop_options("uvloop") == {"use_uvloop": True}
    monkeypatch.setattr(service.importlib.util, "find_spec", lambda name: None)
    assert service.loop_options("auto") == {}
    with pytest.raises(ConfigError, match="uvloop is not installed"):
        service.loop_options("uvloop")


@pytest.mark.parametrize(("choice", "module"), [("auto", "uvloop"), ("asyncio", "asyncio")])
def test_a_service_runs_on_the_loop_it_was_given(choice: str, module: str) -> None:
    result = run_python(_SERVICE, {"EVENT_LOOP": choice})
    assert result.returncode == 0, result.stderr
    assert f"loop: {module}" in result.stdout
