"""`python -m services.ingest`: the ingest process, configured by environment variables."""

from services.ingest.service import run
from shared.config import IngestSettings
from shared.service import main

raise SystemExit(main(IngestSettings, run))
