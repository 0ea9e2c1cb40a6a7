"""Database access and the schema migrations."""

from shared.db.migrate import Migration, discover, migrate
from shared.db.pool import Connection, open_pool
from shared.db.retry import transaction, with_connection

__all__ = [
    "Connection",
    "Migration",
    "discover",
    "migrate",
    "open_pool",
    "transaction",
    "with_connection",
]
