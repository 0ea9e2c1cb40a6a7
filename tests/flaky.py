"""A stand-in service for supervision tests: says "ready", then exits or sleeps as told.

``python -m tests.flaky EXIT_AFTER_S CODE [LINE]``: prints LINE (default "flaky ready"), then
exits with CODE that many seconds later (a negative delay: runs until signalled).
"""

from __future__ import annotations

import sys
import time

from shared.lifeline import exit_with_supervisor

if __name__ == "__main__":
    exit_with_supervisor()  # as every service does (shared.service.main)
    after_s, code = float(sys.argv[1]), int(sys.argv[2])
    print(sys.argv[3] if len(sys.argv) > 3 else "flaky ready", flush=True)
    if after_s < 0:
        time.sleep(120)  # bounded: a supervisor stops it long before
    else:
        time.sleep(after_s)
    sys.exit(code)
