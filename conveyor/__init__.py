"""Conveyor's public face: the ``conveyor`` command line (:mod:`conveyor.cli`).

This package is the composition root: it may import ``services`` and ``emulator``;
``shared`` never imports it.
"""

__all__: list[str] = []
