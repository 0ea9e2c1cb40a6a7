"""`python -m services.infer`: the infer process, configured by environment variables."""

from services.infer.service import run
from shared.config import InferSettings
from shared.service import main

raise SystemExit(main(InferSettings, run))
