"""The store: the DuckDB schema, its migrations and every SQL statement of the project.

store.py holds Store (the pipeline's reads and writes), migrations.py the schema, calls.py the
LLM call journal, browser.py the read-only queries of `autointerp serve`, db.py the file and the
write helpers they share.
"""

from autointerp.store.browser import Browser
from autointerp.store.calls import CallLog
from autointerp.store.db import DB_NAME, db_path
from autointerp.store.migrations import MIGRATIONS, SCHEMA_VERSION
from autointerp.store.store import RunRecord, Store, remove_database

__all__ = [
    "DB_NAME",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Browser",
    "CallLog",
    "RunRecord",
    "Store",
    "db_path",
    "remove_database",
]
