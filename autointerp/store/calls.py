"""The call journal: the LLM response cache and call log in the project's database (llm.CallStore),
and the ledger of requests sent through a provider's batch API."""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from autointerp.store.db import first_row, insert_rows, replace_rows, transaction, utc_now

if TYPE_CHECKING:
    from autointerp.store.store import Store

JOURNAL_NAME = "autointerp.calls.journal"  # LLM calls answered but not yet in the database


class CallLog:
    """The LLM response cache and call log in the project's database (llm.CallStore).

    Every call gets an id (1, 2, ... in the order answers arrive) and the run it was made for.
    It is appended to a journal file beside the database the moment it is recorded, and written
    to the database in batches; the journal is emptied after each batch. A process killed
    between two batches (kill -9) loses no answer: the next CallLog on the project moves the
    journal into the database first, so a re-run is served from the cache.

    Lookups see the unwritten batch too, so a repeated prompt inside one run is served from the
    cache as well. Only calls without an error are ever served. A query costs ~1 ms of the event
    loop's time, so misses (nearly every lookup of a fresh run) are answered from an in-memory
    index of 64-bit key fingerprints, 8 bytes per stored answer, and only hits query.
    """

    _MERGE_EVERY = 1 << 16  # fold this session's keys into the sorted array this often
    _SCHEMA = pa.schema(
        [
            ("call_id", pa.int64()),
            ("run_id", pa.string()),
            ("cache_key", pa.string()),
            ("provider", pa.string()),
            ("model", pa.string()),
            ("purpose", pa.string()),
            ("feature", pa.int64()),
            ("system", pa.string()),
            ("user", pa.string()),
            ("params", pa.string()),
            ("response", pa.string()),
            ("raw", pa.string()),
            ("prompt_tokens", pa.int64()),
            ("completion_tokens", pa.int64()),
            ("latency_s", pa.float64()),
            ("retries", pa.int64()),
            ("cost_usd", pa.float64()),
            ("error", pa.string()),
            ("cache_read_tokens", pa.int64()),
            ("cache_write_tokens", pa.int64()),
            ("created_at", pa.timestamp("us")),
        ]
    )
    _COLUMNS = tuple(_SCHEMA.names[:-1])  # the LLMCall fields, then created_at from its timestamp

    def __init__(self, store: Store, run_id: str | None = None, flush_every: int = 64):
        self.store = store
        self.run_id = run_id
        self.flush_every = flush_every
        self.pending: list = []
        self.journal_path = store.path.with_name(JOURNAL_NAME)
        self._recover()
        self._next_id = first_row(store.con, "SELECT coalesce(max(call_id), 0) + 1 FROM llm_calls")[0]
        self._journal = open(self.journal_path, "a", encoding="utf-8")
        keys = store.con.execute("SELECT DISTINCT cache_key FROM llm_calls WHERE error IS NULL").fetchall()
        self._stored = np.unique(np.array([_fingerprint(k) for (k,) in keys], dtype=np.uint64))  # keys with an answer
        self._recent: set[int] = set()  # this session's, until merged into _stored

    def _recover(self) -> None:
        """Move calls a killed process left in the journal into the database (each id once)."""
        if not self.journal_path.exists():
            return
        rows = []
        for line in self.journal_path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:  # the line being written when the process died
                continue
        if rows:
            for row in rows:
                row["created_at"] = datetime.fromisoformat(row["created_at"])
            replace_rows(
                self.store.con, "llm_calls", self._arrow(rows), "call_id IN (SELECT call_id FROM incoming)", []
            )
        self.journal_path.unlink()

    def _known(self, cache_key: str) -> bool:
        fp = _fingerprint(cache_key)
        if fp in self._recent:
            return True
        i = np.searchsorted(self._stored, np.uint64(fp))
        return bool(i < len(self._stored) and self._stored[i] == fp)

    def lookup(self, cache_key: str):
        if not self._known(cache_key):
            return None
        for call in reversed(self.pending):
            if call.cache_key == cache_key and call.error is None:
                return call.as_completion(cached=True)
        row = first_row(
            self.store.con,
            "SELECT response, provider, model, prompt_tokens, completion_tokens, latency_s, retries, cost_usd, raw, "
            "call_id, coalesce(cache_read_tokens, 0), coalesce(cache_write_tokens, 0) "
            "FROM llm_calls WHERE cache_key = ? AND error IS NULL ORDER BY created_at DESC LIMIT 1",
            [cache_key],
        )
        if row is None:  # two keys sharing a fingerprint
            return None
        from autointerp.llm.client import Completion

        return Completion(
            text=row[0],
            provider=row[1],
            model=row[2],
            prompt_tokens=row[3],
            completion_tokens=row[4],
            latency_s=row[5],
            retries=row[6],
            cost_usd=row[7],
            cached=True,
            raw=row[8],
            call_id=row[9],
            cache_read_tokens=row[10],
            cache_write_tokens=row[11],
        )

    def record(self, call) -> int:
        """Log one call; returns its id."""
        call.call_id, call.run_id = self._next_id, self.run_id
        self._next_id += 1
        row = {c: getattr(call, c) for c in self._COLUMNS} | {"created_at": call.timestamp.isoformat()}
        self._journal.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._journal.flush()  # in the OS's hands now: survives the process being killed
        self.pending.append(call)
        if call.error is None:
            self._recent.add(_fingerprint(call.cache_key))
            if len(self._recent) >= self._MERGE_EVERY:
                self._stored = np.union1d(self._stored, np.fromiter(self._recent, np.uint64, len(self._recent)))
                self._recent.clear()
        if len(self.pending) >= self.flush_every:
            self.flush()
        return call.call_id

    def flush(self) -> None:
        if not self.pending:
            return
        insert_rows(
            self.store.con,
            "llm_calls",
            self._arrow(
                [{c: getattr(call, c) for c in self._COLUMNS} | {"created_at": call.timestamp} for call in self.pending]
            ),
        )
        self.pending.clear()
        self._journal.truncate(0)

    def close(self) -> None:
        self.flush()
        self._journal.close()
        self.journal_path.unlink(missing_ok=True)

    # The batch ledger (batch.py): which requests went to which provider batch, and how it ended.

    def batch_opened(self, record, provider: str, model: str, base_url: str | None) -> None:
        """Store a batch's requests before the provider is asked to run them (status 'submitting')."""
        reqs = record.requests
        requests = pa.table(
            {
                "local_id": [record.local_id] * len(reqs),
                "cache_key": [r.cache_key for r in reqs],
                "purpose": [r.purpose for r in reqs],
                "feature": pa.array([r.feature for r in reqs], pa.int64()),
                "system": [r.system for r in reqs],
                "user": [r.user for r in reqs],
                "params": [json.dumps(r.params, sort_keys=True) for r in reqs],
            }
        )
        with transaction(self.store.con):
            self.store.con.execute(
                "INSERT INTO llm_batches VALUES (?, NULL, ?, ?, ?, ?, 'submitting', ?, ?, NULL, NULL)",
                [record.local_id, provider, model, base_url, self.run_id, len(reqs), record.submitted_at],
            )
            insert_rows(self.store.con, "llm_batch_requests", requests)

    def batch_update(self, local_id: str, status: str, batch_id: str | None = None, detail: str | None = None) -> None:
        """'submitted' (with the provider's id), or how it ended: 'ended', 'failed', 'lost'."""
        ended = utc_now() if status != "submitted" else None
        self.store.con.execute(
            "UPDATE llm_batches SET status = ?, batch_id = coalesce(?, batch_id), detail = coalesce(?, detail), "
            "ended_at = ? WHERE local_id = ?",
            [status, batch_id, detail, ended, local_id],
        )

    def open_batches(self, provider: str, model: str, base_url: str | None) -> list:
        """The batches of this endpoint and model that were submitted (or being submitted) and not collected."""
        from autointerp.llm.client import BatchRecord, BatchRequest

        rows = self.store.con.execute(
            "SELECT local_id, batch_id, status, submitted_at FROM llm_batches WHERE provider = ? AND model = ? "
            "AND base_url IS NOT DISTINCT FROM ? AND status IN ('submitting', 'submitted') ORDER BY submitted_at",
            [provider, model, base_url],
        ).fetchall()
        out = []
        for local_id, batch_id, status, submitted_at in rows:
            reqs = self.store.con.execute(
                'SELECT cache_key, purpose, feature, system, "user", params FROM llm_batch_requests WHERE local_id = ?',
                [local_id],
            ).fetchall()
            out.append(
                BatchRecord(
                    local_id,
                    [BatchRequest(k, p, f, sy, u, json.loads(pa_)) for k, p, f, sy, u, pa_ in reqs],
                    submitted_at,
                    batch_id,
                    status,
                )
            )
        return out

    @classmethod
    def _arrow(cls, rows: list[dict]) -> pa.Table:
        """Rows as an Arrow table, column by column (a DataFrame first costs more than the insert)."""
        # .get: a journal an older autointerp left has no cache token counts (NULL: not reported)
        return pa.table([pa.array([r.get(f.name) for r in rows], f.type) for f in cls._SCHEMA], schema=cls._SCHEMA)


def _fingerprint(cache_key: str) -> int:
    """A 64-bit fingerprint of a cache key, stable within this process (the index lives no longer)."""
    return hash(cache_key) & 0xFFFFFFFFFFFFFFFF
