"""Database access and the schema migrations."""

from shared.db.migrate import Migration, discover, migrate

__all__ = ["Migration", "discover", "migrate"]
