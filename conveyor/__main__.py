"""``python -m conveyor``: the same as the ``conveyor`` command."""

from conveyor.cli.app import app

app(prog_name="conveyor")
