"""`python -m services.persist`: the persist process, configured by environment variables."""

from services.persist.service import run
from shared.config import PersistSettings
from shared.service import main

raise SystemExit(main(PersistSettings, run))
