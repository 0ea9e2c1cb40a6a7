"""``python -m emulator``: the same as ``conveyor emulator``, with the same options."""

import sys

from shared.cli import app

app(["emulator", *sys.argv[1:]], prog_name="python -m emulator")
