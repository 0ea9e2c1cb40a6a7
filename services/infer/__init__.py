"""The infer service."""
