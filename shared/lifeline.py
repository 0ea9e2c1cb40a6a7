"""A supervised service dies with its supervisor.

``make dev`` (:class:`emulator.processes.Supervisor`) starts each service with
``CONVEYOR_SUPERVISOR_PID``. If the supervisor itself is killed (SIGKILL, a crash), nobody is
left to stop the services, and they would keep running and holding their ports. So a service
that sees the variable asks Linux for SIGTERM when its parent dies (``PR_SET_PDEATHSIG``) and
drains as on any SIGTERM. Elsewhere (containers, other systems), nothing happens: there the
platform owns the process's life.

Hand-written with ctypes because ``prctl`` is a single system call that no maintained library
in our dependencies wraps.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Mapping

__all__ = ["SUPERVISOR_PID", "exit_with_supervisor"]

SUPERVISOR_PID = "CONVEYOR_SUPERVISOR_PID"
_PR_SET_PDEATHSIG = 1


def exit_with_supervisor(environ: Mapping[str, str] | None = None) -> bool:
    """Arrange SIGTERM for when the supervisor dies; True if arranged."""
    environ = os.environ if environ is None else environ
    supervisor = environ.get(SUPERVISOR_PID, "")
    if not supervisor.isdigit() or not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        return False
    if os.getppid() != int(supervisor):  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)
    return True
