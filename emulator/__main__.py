"""``python -m emulator``: the same as ``conveyor emulator``, with the same options."""

from emulator.cli import main

main()
