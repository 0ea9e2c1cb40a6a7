"""`python -m services.notify`: the notify process, configured by environment variables."""

from services.notify.service import run
from shared.config import NotifySettings
from shared.service import main

raise SystemExit(main(NotifySettings, run))
