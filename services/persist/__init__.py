"""The persist service."""
