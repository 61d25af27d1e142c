"""The database file of a project: where it lives, opening it, and the write helpers every store
module goes through (all-or-nothing transactions, bulk Arrow inserts)."""

from __future__ import annotations

import re
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pyarrow as pa

from autointerp.errors import AutointerpError

DB_NAME = "autointerp.duckdb"


def db_path(project: str | Path) -> Path:
    return Path(project) / DB_NAME


# A DuckDB file begins with three 4 KiB headers (the first holds the magic bytes "DUCK" after an
# 8-byte checksum); its blocks follow.
_HEADERS = 3 * 4096
_SQLITE_MAGIC = b"SQLite format 3\x00"
_MOVE = "point --project at a directory of autointerp's (or a new one), or move the file out of the project directory"


def check_file(path: Path) -> int | None:
    """Refuse, before DuckDB opens it, a file that is not a DuckDB database (DuckDB would try to
    download an extension to read a SQLite one). Returns its size (None: no file). Only reads it."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(16)
    except FileNotFoundError:
        return None  # a new database
    except OSError as e:
        raise AutointerpError(
            f"cannot read {path}: {e.strerror}", "check that the file is yours and that you may read and write it"
        ) from None
    if head.startswith(_SQLITE_MAGIC):
        raise AutointerpError(f"{path} is a SQLite database, not a DuckDB one; autointerp did not write it", _MOVE)
    if head[8:12] != b"DUCK":
        raise AutointerpError(
            f"{path} is not a DuckDB database" + (" (the file is empty)" if size == 0 else ""),
            _MOVE + "; autointerp creates its database where none is",
        )
    return size


def _truncated(path: Path, size: int, detail: str = "") -> AutointerpError:
    return AutointerpError(
        f"{path} is truncated ({size:,} bytes{detail}): an interrupted copy or a full disk?",
        "restore the file from a backup or copy it again; else move it aside and gather again (it was left as it was)",
    )


def connect(path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    """Open the file, turning DuckDB's errors (a lock held by another process, not a database, a
    truncated one) into ones that say what to do."""
    size = check_file(path)
    try:
        con = duckdb.connect(str(path), read_only=read_only)
    except duckdb.IOException as e:
        if "lock" in str(e).lower():
            holder = re.search(r"PID (\d+)", str(e))
            raise AutointerpError(
                f"{path} is locked by another process" + (f" (PID {holder.group(1)})" if holder else ""),
                "wait for that process to finish or stop it, or use a different --project directory",
            ) from None
        if size is not None and "could not read enough bytes" in str(e).lower():
            raise _truncated(path, size) from None
        raise AutointerpError(
            f"cannot open {path}: {e}", "check the file is a DuckDB database and that you may read and write it"
        ) from None
    except duckdb.Error as e:
        raise AutointerpError(
            f"{path} is not a usable DuckDB file: {e}", "move it aside; autointerp will create a new one"
        ) from None
    if size is not None:  # a truncated file opens, and fails at the first read of a lost block
        used, block_size = first_row(
            con, "SELECT used_blocks, block_size FROM pragma_database_size() WHERE database_name = current_database()"
        ) or (0, 0)
        if _HEADERS + used * block_size > size:
            con.close()
            raise _truncated(path, size, f", short of the {used} blocks of {block_size:,} bytes it uses")
    return con


def utc_now() -> datetime:
    """The timestamp stored in created_at columns: UTC, without a zone (DuckDB TIMESTAMP)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection):
    """All or nothing: a failure rolls back, so what was stored before stays."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise


def insert_rows(con: duckdb.DuckDBPyConnection, name: str, table: pa.Table) -> None:
    """Bulk-insert an Arrow table by column name."""
    con.register("incoming", table)
    try:
        con.execute(f"INSERT INTO {name} BY NAME SELECT * FROM incoming")
    finally:
        con.unregister("incoming")


def replace_rows(
    con: duckdb.DuckDBPyConnection, name: str, table: pa.Table, where: str, args: list, own_transaction: bool = True
) -> None:
    """Delete the rows `where` selects (it may refer to the incoming table) and insert the new ones;
    in a transaction of its own unless own_transaction is False (the caller holds one)."""
    with transaction(con) if own_transaction else nullcontext():
        con.register("incoming", table)
        try:
            con.execute(f"DELETE FROM {name} WHERE {where}", args)
            con.execute(f"INSERT INTO {name} BY NAME SELECT * FROM incoming")
        finally:
            con.unregister("incoming")


def first_row(con: duckdb.DuckDBPyConnection, sql: str, args: list | None = None) -> tuple | None:
    """The first row of a query, or None. Fetches to the end: duckdb refuses other work on a
    connection while a result is unfinished (a fetchone() leaves it so)."""
    rows = con.execute(sql, args or []).fetchall()
    return rows[0] if rows else None
