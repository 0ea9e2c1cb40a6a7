"""Conveyor's public face: the Python client (:mod:`conveyor.client`) and the ``conveyor``
command line (:mod:`conveyor.cli`).

    from conveyor import Client, AsyncClient, verify_webhook

This package is the composition root: the command line may import ``services`` and
``emulator``; ``shared`` never imports it. ``import conveyor`` itself loads only the client,
which imports none of them (nor torch, nor boto), so that users' programs stay light.
"""

# The client's names, one list: conveyor.client.__all__ says what is public (mypy and ruff
# follow a star import through it).
from conveyor.client import *  # noqa: F403
from conveyor.client import __all__ as __all__
