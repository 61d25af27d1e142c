"""Store: the one DuckDB file of a project directory. This module alone owns its schema and SQL.

Writes are bulk (Arrow tables, never row by row) and each stage's write for a
run replaces that run's earlier rows inside one transaction: re-running a run id
is idempotent, and a failure leaves what was stored before untouched.
"""

from __future__ import annotations

import json
import os
import re
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from autointerp.errors import AutointerpError

if TYPE_CHECKING:
    from autointerp.records import FeatureSnippets

DB_NAME = "autointerp.duckdb"
JOURNAL_NAME = "autointerp.calls.journal"  # LLM calls answered but not yet in the database (CallLog)

# The schema as migrations: named, applied in order, each in its own transaction and recorded in
# schema_migrations. Never edit one that has shipped; append a new one. A database written before
# migrations existed (meta schema_version 1, no schema_migrations table) has exactly migration 1.
# A token's readable piece, by the tokenizer style its vocabulary shows (records.vocab_style, in SQL):
# WordPiece continuations lose '##' and other words get a leading space; byte-level BPE's marks
# become the space, newline and tab they stand for; SentencePiece's '▁' becomes a space.
VOCAB_PIECES = """
UPDATE vocab SET piece = CASE styles.style
    WHEN 'wordpiece' THEN CASE WHEN vocab.token LIKE '##%' THEN substr(vocab.token, 3) ELSE ' ' || vocab.token END
    WHEN 'bytelevel' THEN replace(replace(replace(vocab.token, 'Ġ', ' '), 'Ċ', chr(10)), 'ĉ', chr(9))
    ELSE replace(vocab.token, '▁', ' ') END
FROM (SELECT run_id,
             CASE WHEN wp >= bl AND wp >= sp THEN 'wordpiece' WHEN bl >= sp THEN 'bytelevel' ELSE 'sentencepiece' END
             AS style
      FROM (SELECT run_id, count(*) FILTER (WHERE token LIKE '##%') AS wp,
                   count(*) FILTER (WHERE contains(token, 'Ġ')) AS bl,
                   count(*) FILTER (WHERE contains(token, '▁')) AS sp
            FROM vocab WHERE token_id < 50000 AND run_id IN ({runs}) GROUP BY run_id)) AS styles
WHERE vocab.run_id = styles.run_id;
"""

_HEADLINES = ("detection", "fuzzing", "simulation", "embedding", "intervention")
VIEWS = (
    """
CREATE OR REPLACE VIEW feature_summary AS
SELECT f.run_id, x.explainer, f.feature, x.label, x.status AS label_status, f.density, f.max_activation, f.n_firing,
    f.dead, f.dense,
"""
    + ",\n".join(
        f"    max(s.value) FILTER (WHERE s.scorer = '{n}') AS {n}, max(s.ci_low) FILTER (WHERE s.scorer = '{n}') AS "
        f"{n}_low, "
        f"max(s.ci_high) FILTER (WHERE s.scorer = '{n}') AS {n}_high, max(s.p_value) FILTER (WHERE s.scorer = '{n}') "
        f"AS {n}_p"
        for n in _HEADLINES
    )
    + """
FROM features f
LEFT JOIN explanations x ON x.run_id = f.run_id AND x.feature = f.feature
LEFT JOIN scores s
    ON s.run_id = f.run_id AND s.feature = f.feature AND s.explainer = x.explainer AND s.label_source = 'true'
GROUP BY ALL;
CREATE OR REPLACE VIEW snippet_text AS
SELECT e.run_id, e.feature, e.split, e.kind, e.rank, e.quantile, e.max_activation, e.context_id, e.doc_id, e.doc_offset,
       string_agg(coalesce(v.piece, v.token), '' ORDER BY t.i) AS text,
       max(coalesce(v.piece, v.token)) FILTER (WHERE t.i = e.peak + 1) AS peak_token
FROM examples e
CROSS JOIN LATERAL (SELECT unnest(e.token_ids) AS token_id, generate_subscripts(e.token_ids, 1) AS i) t
JOIN vocab v ON v.run_id = e.run_id AND v.token_id = t.token_id
GROUP BY ALL;
"""
)

MIGRATIONS: list[tuple[str, str]] = [
    (
        "initial",
        """
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY,
    created_at TIMESTAMP, updated_at TIMESTAMP,
    model VARCHAR, hookpoint VARCHAR, hook_module VARCHAR, d_model INTEGER,
    sae_source VARCHAR, sae_format VARCHAR, sae_architecture VARCHAR, d_sae INTEGER,
    corpus VARCHAR, n_tokens BIGINT, n_contexts BIGINT, gather_seconds DOUBLE,
    config JSON, versions JSON, sae_metrics JSON
);
CREATE TABLE IF NOT EXISTS features (
    run_id VARCHAR, feature INTEGER, n_firing BIGINT, density DOUBLE,
    max_activation DOUBLE, mean_activation DOUBLE, dead BOOLEAN, dense BOOLEAN,
    histogram BIGINT[],
    PRIMARY KEY (run_id, feature)
);
CREATE TABLE IF NOT EXISTS examples (
    run_id VARCHAR, feature INTEGER, split VARCHAR, kind VARCHAR, rank INTEGER, quantile INTEGER,
    context_id BIGINT, doc_id BIGINT, doc_offset BIGINT, peak INTEGER, max_activation DOUBLE,
    token_ids INTEGER[], activations FLOAT[]
);
CREATE TABLE IF NOT EXISTS contexts (run_id VARCHAR, context_id BIGINT, split VARCHAR);
CREATE TABLE IF NOT EXISTS documents (run_id VARCHAR, doc_id BIGINT, name VARCHAR);
CREATE TABLE IF NOT EXISTS vocab (run_id VARCHAR, token_id INTEGER, token VARCHAR);
CREATE TABLE IF NOT EXISTS explanations (
    run_id VARCHAR, feature INTEGER, explainer VARCHAR, label VARCHAR, status VARCHAR, error VARCHAR,
    raw VARCHAR, prompt_hash VARCHAR, n_snippets INTEGER, created_at TIMESTAMP,
    PRIMARY KEY (run_id, feature, explainer)
);
CREATE TABLE IF NOT EXISTS scores (
    run_id VARCHAR, feature INTEGER, explainer VARCHAR, scorer VARCHAR, judge VARCHAR,
    label_source VARCHAR, label_feature INTEGER, metric VARCHAR,
    value DOUBLE, ci_low DOUBLE, ci_high DOUBLE, n INTEGER, method VARCHAR,
    status VARCHAR, n_failed INTEGER, error VARCHAR, prompt_hash VARCHAR, created_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS llm_calls (
    cache_key VARCHAR, provider VARCHAR, model VARCHAR, purpose VARCHAR, feature INTEGER,
    system VARCHAR, "user" VARCHAR, params JSON, response VARCHAR, raw VARCHAR,
    prompt_tokens INTEGER, completion_tokens INTEGER, latency_s DOUBLE, retries INTEGER,
    cost_usd DOUBLE, error VARCHAR, created_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS categories (
    run_id VARCHAR, explainer VARCHAR, method VARCHAR, position INTEGER, feature INTEGER, label VARCHAR,
    category INTEGER, code VARCHAR, status VARCHAR, error VARCHAR, raw VARCHAR, merge_rule VARCHAR,
    created_at TIMESTAMP,
    PRIMARY KEY (run_id, explainer, method, position)
);
CREATE TABLE IF NOT EXISTS saturation_steps (
    run_id VARCHAR, explainer VARCHAR, method VARCHAR, step INTEGER, feature INTEGER, category INTEGER,
    total INTEGER, n_categories INTEGER, its_ratio DOUBLE, its_rolling DOUBLE,
    guest_ratio DOUBLE, guest_saturated BOOLEAN, coverage DOUBLE, p_new DOUBLE,
    chao1 DOUBLE, chao1_low DOUBLE, chao1_high DOUBLE, expected_new_next_n DOUBLE, merge_rule VARCHAR,
    PRIMARY KEY (run_id, explainer, method, step)
);
CREATE TABLE IF NOT EXISTS saturation_summary (
    run_id VARCHAR, explainer VARCHAR, method VARCHAR, merge_rule VARCHAR, params JSON,
    n_labels INTEGER, n_mapped INTEGER, n_failed INTEGER, n_categories INTEGER, saturated BOOLEAN,
    verdict JSON, rarefaction JSON, bootstrap JSON, extrapolation JSON, created_at TIMESTAMP,
    PRIMARY KEY (run_id, explainer, method)
);
""",
    ),
    # Every LLM call gets an id and the run it was made for; labels and scores keep the ids of the
    # calls that produced them. Calls logged before this migration are numbered in insertion order.
    (
        "llm call ids and links",
        """
ALTER TABLE llm_calls ADD COLUMN call_id BIGINT;
ALTER TABLE llm_calls ADD COLUMN run_id VARCHAR;
UPDATE llm_calls SET call_id = numbered.n
    FROM (SELECT rowid AS r, row_number() OVER (ORDER BY created_at, rowid) AS n FROM llm_calls) AS numbered
    WHERE llm_calls.rowid = numbered.r;
ALTER TABLE explanations ADD COLUMN call_id BIGINT;
ALTER TABLE scores ADD COLUMN call_ids BIGINT[];
""",
    ),
    # Labelling order as its own column (it was inferred from created_at, so re-explaining one
    # feature reordered the saturation curve). Existing labels keep the order they had.
    (
        "labelling order",
        """
ALTER TABLE explanations ADD COLUMN position INTEGER;
UPDATE explanations SET position = ordered.p
    FROM (SELECT run_id, explainer, feature,
                 row_number() OVER (PARTITION BY run_id, explainer ORDER BY created_at, feature) AS p
          FROM explanations) AS ordered
    WHERE explanations.run_id = ordered.run_id AND explanations.explainer = ordered.explainer
      AND explanations.feature = ordered.feature;
""",
    ),
    # Scores carry their per-feature null test; each scorer's summary is stored once, by the score
    # stage, and read by the report.
    (
        "score p-values and summaries",
        """
ALTER TABLE scores ADD COLUMN p_value DOUBLE;
CREATE TABLE score_summaries (
    run_id VARCHAR, explainer VARCHAR, scorer VARCHAR, judge VARCHAR, metric VARCHAR, chance DOUBLE, samples VARCHAR,
    n_features INTEGER, n_ok INTEGER, n_failed INTEGER, n_undefined INTEGER, median DOUBLE, q25 DOUBLE, q75 DOUBLE,
    n_confident INTEGER, alpha DOUBLE, control VARCHAR, n_controls INTEGER, n_pairs INTEGER, n_pairs_undefined INTEGER,
    shuffled_median DOUBLE, gap DOUBLE, gap_low DOUBLE, gap_high DOUBLE, verdict VARCHAR, calls_saved BIGINT,
    created_at TIMESTAMP,
    PRIMARY KEY (run_id, explainer, scorer)
);
""",
    ),
    # Causal LMs: what each feature's direction does to the next-token prediction (effects.py),
    # written with the gather; the settings that made them on the run.
    (
        "output effects",
        """
CREATE TABLE output_effects (
    run_id VARCHAR, feature INTEGER, kind VARCHAR, rank INTEGER, token_id INTEGER, value DOUBLE
);
ALTER TABLE runs ADD COLUMN output_effects JSON;
""",
    ),
    # Views for the questions users ask first (README "Queries"): one row per feature and explainer
    # with each scorer's headline, and snippets as text. Tokens get their readable piece; runs keep
    # their histogram's bin edges (NULL for runs gathered before this).
    (
        "views and readable tokens",
        """
ALTER TABLE vocab ADD COLUMN piece VARCHAR;
ALTER TABLE runs ADD COLUMN histogram_edges DOUBLE[];
"""
        + VOCAB_PIECES.format(runs="SELECT run_id FROM vocab")
        + VIEWS,
    ),
    # Requests sent through a provider's batch API (batch.py): written before the batch is created,
    # so a run killed while a batch runs at the provider collects it on the re-run instead of
    # paying for the same requests again.
    (
        "llm batches",
        """
CREATE TABLE llm_batches (
    local_id VARCHAR PRIMARY KEY, batch_id VARCHAR, provider VARCHAR, model VARCHAR, base_url VARCHAR, run_id VARCHAR,
    status VARCHAR, n_requests INTEGER, submitted_at TIMESTAMP, ended_at TIMESTAMP, detail VARCHAR
);
CREATE TABLE llm_batch_requests (
    local_id VARCHAR, cache_key VARCHAR, purpose VARCHAR, feature BIGINT, system VARCHAR, "user" VARCHAR, params VARCHAR
);
""",
    ),
]
SCHEMA_VERSION = len(MIGRATIONS)

# Tables holding one run's gather output, replaced together.
GATHER_TABLES = ("features", "examples", "contexts", "documents", "vocab", "output_effects")
# Tables derived from a run's examples: a new gather of the run deletes them (the LLM call log stays,
# so labelling the same examples again is served from the cache).
DERIVED_TABLES = ("explanations", "scores", "score_summaries", "categories", "saturation_steps", "saturation_summary")


@dataclass
class RunRecord:
    run_id: str
    model: str
    hookpoint: str
    hook_module: str
    d_model: int
    sae_source: str
    sae_format: str
    sae_architecture: str
    d_sae: int
    corpus: str
    config: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    sae_metrics: dict = field(default_factory=dict)
    n_tokens: int = 0
    n_contexts: int = 0
    gather_seconds: float = 0.0
    output_effects: dict = field(default_factory=dict)  # settings of the stored output effects ({} when none)
    histogram_edges: list[float] = field(
        default_factory=list
    )  # the features' histogram bins: (-inf, e0), [e0, e1) … [eN, inf)


def db_path(project: str | Path) -> Path:
    return Path(project) / DB_NAME


def remove_database(project: str | Path) -> None:
    """Delete a project's database (closed) and its write-ahead log; the directory too when that leaves it empty."""
    path = db_path(project)
    for file in (path, path.with_name(path.name + ".wal")):
        file.unlink(missing_ok=True)
    try:
        path.parent.rmdir()
    except OSError:
        pass  # other files (configs, reports) stay


def _writable(directory: Path) -> bool:
    return os.access(directory, os.W_OK | os.X_OK)


class Store:
    def __init__(self, project: str | Path, read_only: bool = False, create: bool = True):
        """read_only: a connection that writes nothing; create=False: refuse a project without a database."""
        self.path = db_path(project)
        if (read_only or not create) and not self.path.exists():
            raise AutointerpError(
                f"no database at {self.path}", "run `autointerp gather` (or `autointerp run`) for this project first"
            )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise AutointerpError(
                f"cannot create the project directory {self.path.parent}: {e.strerror}",
                "pass a --project path inside a writable directory",
            ) from None
        if not read_only and not _writable(self.path.parent):
            raise AutointerpError(
                f"the project directory {self.path.parent} is not writable",
                "pass a --project in a directory you can write, or change its permissions (chmod u+w)",
            )
        if read_only and _pending_migrations(self.path):
            with Store(project):  # upgrade first: a read-only connection cannot
                pass
        self.con = _connect(self.path, read_only)
        if not read_only:
            try:
                migrate(self.con, self.path)
            except BaseException:
                self.con.close()
                raise

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ writes

    def write_gather(
        self,
        run: RunRecord,
        features: pd.DataFrame,
        examples: pa.Table,
        contexts: pd.DataFrame,
        documents: pd.DataFrame,
        vocab: list[str],
        effects: pd.DataFrame | None = None,
    ) -> None:
        """Replace everything the gather stage stored for `run.run_id`, atomically."""
        tables = {
            "features": _features_arrow(run.run_id, features),
            "examples": _examples_arrow(run.run_id, examples),
            "contexts": pa.table(
                {
                    "run_id": [run.run_id] * len(contexts),
                    "context_id": contexts.context_id.to_numpy(),
                    "split": contexts.split.to_numpy(),
                }
            ),
            "documents": pa.table(
                {
                    "run_id": [run.run_id] * len(documents),
                    "doc_id": documents.doc_id.to_numpy(),
                    "name": documents.name.to_numpy(),
                }
            ),
            "vocab": pa.table(
                {"run_id": [run.run_id] * len(vocab), "token_id": np.arange(len(vocab), dtype=np.int32), "token": vocab}
            ),
            "output_effects": _effects_arrow(run.run_id, effects),
        }
        now = _now()
        with self._transaction():
            created = self._one("SELECT created_at FROM runs WHERE run_id = ?", [run.run_id])
            self.con.execute("DELETE FROM runs WHERE run_id = ?", [run.run_id])
            row = asdict(run)
            for key in ("config", "versions", "sae_metrics", "output_effects"):
                row[key] = json.dumps(row[key], default=str)
            row["created_at"] = created[0] if created else now
            row["updated_at"] = now
            cols = list(row)
            self.con.execute(
                f"INSERT INTO runs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", list(row.values())
            )
            for name, table in tables.items():
                self.con.execute(f"DELETE FROM {name} WHERE run_id = ?", [run.run_id])
                self._insert(name, table)
            self.con.execute(VOCAB_PIECES.format(runs="?"), [run.run_id])
            for name in DERIVED_TABLES:  # labels of the old examples no longer describe the new ones
                self.con.execute(f"DELETE FROM {name} WHERE run_id = ?", [run.run_id])

    # ------------------------------------------------------------ reads

    def runs(self) -> pd.DataFrame:
        return self.con.execute("SELECT * FROM runs ORDER BY created_at").df()

    def run(self, run_id: str | None = None) -> dict:
        """One run as a dict (JSON columns decoded); the latest run when run_id is None."""
        if run_id is None:
            row = self.con.execute("SELECT * FROM runs ORDER BY updated_at DESC LIMIT 1").df()
        else:
            row = self.con.execute("SELECT * FROM runs WHERE run_id = ?", [run_id]).df()
        if row.empty:
            known = self.con.execute("SELECT run_id FROM runs").fetchall()
            raise AutointerpError(
                f"no run '{run_id}' in {self.path}" if run_id else f"no run in {self.path}",
                f"pass one of: {', '.join(r[0] for r in known)}" if known else "run `autointerp gather` first",
            )
        out = row.iloc[0].to_dict()
        for key in ("config", "versions", "sae_metrics", "output_effects"):
            out[key] = json.loads(out[key]) if isinstance(out.get(key), str) and out[key] else {}
        return out

    def output_effects(self, run_id: str, features: list[int] | None = None) -> pd.DataFrame:
        """feature, kind (promoted | suppressed | amplified), rank, token_id, token, value; empty when
        none were computed."""
        where = "" if features is None else "AND e.feature IN (SELECT UNNEST(?::INTEGER[]))"
        args = [run_id] + ([list(map(int, features))] if features is not None else [])
        return self.con.execute(
            f"""SELECT e.feature, e.kind, e.rank, e.token_id, v.token, e.value FROM output_effects e
                LEFT JOIN vocab v ON v.run_id = e.run_id AND v.token_id = e.token_id
                WHERE e.run_id = ? {where} ORDER BY e.feature, e.kind, e.rank""",
            args,
        ).df()

    def features(self, run_id: str) -> pd.DataFrame:
        return self.con.execute("SELECT * FROM features WHERE run_id = ? ORDER BY feature", [run_id]).df()

    def examples(
        self, run_id: str, feature: int | None = None, split: str | None = None, kind: str | None = None
    ) -> pd.DataFrame:
        where, args = ["run_id = ?"], [run_id]
        for col, value in (("feature", feature), ("split", split), ("kind", kind)):
            if value is not None:
                where.append(f"{col} = ?")
                args.append(value)
        sql = f"SELECT * FROM examples WHERE {' AND '.join(where)} ORDER BY feature, split, kind, rank"
        return self.con.execute(sql, args).df()

    def contexts(self, run_id: str) -> pd.DataFrame:
        return self.con.execute(
            "SELECT context_id, split FROM contexts WHERE run_id = ? ORDER BY context_id", [run_id]
        ).df()

    def vocab(self, run_id: str) -> list[str]:
        rows = self.con.execute("SELECT token FROM vocab WHERE run_id = ? ORDER BY token_id", [run_id]).fetchall()
        return [r[0] for r in rows]

    def documents(self, run_id: str) -> pd.DataFrame:
        return self.con.execute("SELECT doc_id, name FROM documents WHERE run_id = ? ORDER BY doc_id", [run_id]).df()

    def feature_snippets(
        self,
        run_id: str,
        features: list[int],
        *,
        split: str | None = None,
        max_per_kind: dict[str, int] | None = None,
        quantile_bins: tuple[int, ...] | None = None,
    ) -> list[FeatureSnippets]:
        """Stored windows of these features as typed records, tokens as display pieces.

        split limits to one split; max_per_kind caps rows per (feature, split, kind) by rank,
        so a stage loads only what it shows; quantile_bins keeps, of the quantile samples, only the
        first of each listed bin.
        """
        from autointerp.records import FeatureSnippets, Snippet, piece_tables, vocab_style

        vocab = self.vocab(run_id)
        first, rest = piece_tables(vocab, vocab_style(vocab))
        caps = max_per_kind or {}
        cap_sql = " OR ".join(f"(kind = '{k}' AND rank < {int(n)})" for k, n in caps.items())
        uncapped = [k for k in ("top", "quantile", "negative") if k not in caps]
        if uncapped:
            cap_sql = " OR ".join(filter(None, [cap_sql, f"kind IN ({', '.join(repr(k) for k in uncapped)})"]))
        where = f"run_id = ? AND feature IN (SELECT feature FROM wanted) AND ({cap_sql})" + (
            " AND split = ?" if split else ""
        )
        qualify = ""
        if quantile_bins is not None:
            bins = ", ".join(str(int(b)) for b in quantile_bins) or "NULL"
            qualify = (
                f" QUALIFY kind <> 'quantile' OR (quantile IN ({bins}) AND "
                "row_number() OVER (PARTITION BY feature, split, kind, quantile ORDER BY rank) = 1)"
            )
        args = [run_id] + ([split] if split else [])
        self.con.register("wanted", pa.table({"feature": pa.array(features, pa.int32())}))
        try:
            stats = self.con.execute(
                "SELECT feature, max_activation, density FROM features WHERE run_id = ? AND feature IN (SELECT feature "
                "FROM wanted) ORDER BY feature",
                [run_id],
            ).fetchall()
            ex = self.con.execute(
                "SELECT feature, split, kind, context_id, token_ids, activations, max_activation, quantile FROM "
                f"examples WHERE {where}{qualify} ORDER BY feature, split, kind, rank",
                args,
            ).fetchall()
        finally:
            self.con.unregister("wanted")
        out = {f: FeatureSnippets(feature=f, max_activation=m, density=d) for f, m, d in stats}
        buckets = {
            ("explain", False): "explain",
            ("explain", True): "explain_negatives",
            ("score", False): "score",
            ("score", True): "score_negatives",
        }
        for feature, split_, kind, ctx, ids, acts, peak, quantile in ex:
            pieces = (first[ids[0]], *[rest[i] for i in ids[1:]]) if ids else ()
            snip = Snippet(
                feature, split_, kind, ctx, pieces, tuple(acts) if acts is not None else None, peak, quantile
            )
            getattr(out[feature], buckets[split_, kind == "negative"]).append(snip)
        return [out[f] for f in features if f in out]

    def alive_features(self, run_id: str, include_dense: bool = False) -> list[int]:
        sql = "SELECT feature FROM features WHERE run_id = ? AND NOT dead" + ("" if include_dense else " AND NOT dense")
        return [r[0] for r in self.con.execute(sql + " ORDER BY feature", [run_id]).fetchall()]

    # ------------------------------------------------------------ explain and score

    def write_explanations(self, run_id: str, explainer: str, rows: pd.DataFrame) -> None:
        """Replace the labels of these features by this explainer. rows, in labelling order: feature, label,
        status, error, raw, prompt_hash, n_snippets, call_id. A feature labelled before keeps its place in
        the labelling order; new ones are appended after the last."""
        with self._transaction():
            self.con.register("incoming_features", pa.table({"feature": pa.array(rows.feature.to_numpy(), pa.int32())}))
            try:
                kept = dict(
                    self.con.execute(
                        "SELECT feature, position FROM explanations WHERE run_id = ? AND explainer = ? AND feature IN "
                        "(SELECT feature FROM incoming_features)",
                        [run_id, explainer],
                    ).fetchall()
                )
            finally:
                self.con.unregister("incoming_features")
            last = self._one(
                "SELECT coalesce(max(position), 0) FROM explanations WHERE run_id = ? AND explainer = ?",
                [run_id, explainer],
            )[0]
            new = ~rows.feature.isin(list(kept))
            position = rows.feature.map(kept).astype("Int64")
            position[new] = last + np.arange(1, int(new.sum()) + 1)
            frame = rows.assign(
                run_id=run_id, explainer=explainer, position=position.astype("int32"), created_at=_now()
            )
            self._replace(
                "explanations",
                pa.Table.from_pandas(frame, preserve_index=False),
                "run_id = ? AND explainer = ? AND feature IN (SELECT feature FROM incoming)",
                [run_id, explainer],
                transaction=False,
            )

    def explanations(self, run_id: str, explainer: str | None = None) -> pd.DataFrame:
        sql, args = "SELECT * FROM explanations WHERE run_id = ?", [run_id]
        if explainer is not None:
            sql, args = sql + " AND explainer = ?", args + [explainer]
        return self.con.execute(sql + " ORDER BY feature", args).df()

    def explainers(self, run_id: str) -> list[str]:
        return [
            r[0]
            for r in self.con.execute(
                "SELECT DISTINCT explainer FROM explanations WHERE run_id = ? ORDER BY 1", [run_id]
            ).fetchall()
        ]

    def write_scores(
        self, run_id: str, explainer: str, scorer: str, rows: pd.DataFrame, label_source: str = "true"
    ) -> None:
        """Replace this scorer's rows of one label source (own labels, "true", or the control,
        "shuffled") for these features."""
        frame = rows.assign(run_id=run_id, explainer=explainer, scorer=scorer, created_at=_now())
        calls = frame.pop("call_ids") if "call_ids" in frame else pd.Series([[]] * len(frame))
        table = pa.Table.from_pandas(frame, preserve_index=False).append_column(
            "call_ids", pa.array(list(calls), pa.list_(pa.int64()))
        )
        self._replace(
            "scores",
            table,
            "run_id = ? AND explainer = ? AND scorer = ? AND label_source = ? AND feature IN (SELECT feature FROM "
            "incoming)",
            [run_id, explainer, scorer, label_source],
        )

    def delete_scores(self, run_id: str, explainer: str, scorers: list[str], label_source: str) -> None:
        for scorer in scorers:
            self.con.execute(
                "DELETE FROM scores WHERE run_id = ? AND explainer = ? AND scorer = ? AND label_source = ?",
                [run_id, explainer, scorer, label_source],
            )

    def scores(self, run_id: str, explainer: str | None = None, scorer: str | None = None) -> pd.DataFrame:
        sql, args = "SELECT * FROM scores WHERE run_id = ?", [run_id]
        for col, value in (("explainer", explainer), ("scorer", scorer)):
            if value is not None:
                sql, args = sql + f" AND {col} = ?", args + [value]
        return self.con.execute(sql + " ORDER BY scorer, feature, label_source, metric", args).df()

    def write_score_summaries(self, run_id: str, explainer: str, rows: pd.DataFrame) -> None:
        """Replace the summaries of these scorers (one row each: see the score_summaries columns)."""
        table = pa.Table.from_pandas(
            rows.assign(run_id=run_id, explainer=explainer, created_at=_now()), preserve_index=False
        )
        self._replace(
            "score_summaries",
            table,
            "run_id = ? AND explainer = ? AND scorer IN (SELECT scorer FROM incoming)",
            [run_id, explainer],
        )

    def score_summaries(self, run_id: str, explainer: str | None = None) -> pd.DataFrame:
        sql, args = "SELECT * FROM score_summaries WHERE run_id = ?", [run_id]
        if explainer is not None:
            sql, args = sql + " AND explainer = ?", args + [explainer]
        return self.con.execute(sql + " ORDER BY explainer, scorer", args).df()

    def llm_totals(self, purpose_prefix: str = "") -> dict:
        row = self._one(
            "SELECT count(*), count(*) FILTER (WHERE error IS NOT NULL), coalesce(sum(prompt_tokens), 0), "
            "coalesce(sum(completion_tokens), 0), sum(cost_usd) FROM llm_calls WHERE purpose LIKE ?",
            [purpose_prefix + "%"],
        )
        return {
            "calls": row[0],
            "failed": row[1],
            "prompt_tokens": row[2],
            "completion_tokens": row[3],
            "cost_usd": row[4],
        }

    @contextmanager
    def _transaction(self):
        """All or nothing: a failure rolls back, so what was stored before stays."""
        self.con.execute("BEGIN TRANSACTION")
        try:
            yield
            self.con.execute("COMMIT")
        except Exception:
            self.con.execute("ROLLBACK")
            raise

    def _insert(self, name: str, table: pa.Table) -> None:
        """Bulk-insert an Arrow table by column name."""
        self.con.register("incoming", table)
        try:
            self.con.execute(f"INSERT INTO {name} BY NAME SELECT * FROM incoming")
        finally:
            self.con.unregister("incoming")

    def _replace(self, name: str, table: pa.Table, where: str, args: list, transaction: bool = True) -> None:
        """Delete the rows `where` selects (it may refer to the incoming table) and insert the new ones."""
        with self._transaction() if transaction else nullcontext():
            self.con.register("incoming", table)
            try:
                self.con.execute(f"DELETE FROM {name} WHERE {where}", args)
                self.con.execute(f"INSERT INTO {name} BY NAME SELECT * FROM incoming")
            finally:
                self.con.unregister("incoming")

    def _one(self, sql: str, args: list | None = None) -> tuple | None:
        """The first row of a query, or None. Fetches to the end: duckdb refuses other work on a
        connection while a result is unfinished (a fetchone() leaves it so)."""
        rows = self.con.execute(sql, args or []).fetchall()
        return rows[0] if rows else None

    # ---- saturation (tables in SATURATION_SCHEMA; this section belongs to the saturation stage)

    _SATURATION_JSON = (
        "params",
        "verdict",
        "rarefaction",
        "bootstrap",
        "extrapolation",
    )  # JSON columns of saturation_summary

    def saturation_labels(self, run_id: str, explainer: str) -> pd.DataFrame:
        """The labels this explainer produced for the run (failures left out), in labelling order."""
        return self.con.execute(
            "SELECT feature, label FROM explanations WHERE run_id = ? AND explainer = ? AND status = 'ok' ORDER BY "
            "position",
            [run_id, explainer],
        ).df()

    def write_saturation(
        self, run_id: str, explainer: str, method: str, categories: pd.DataFrame, steps: pd.DataFrame, summary: dict
    ) -> None:
        """Replace this run+explainer+method's categories, per-step figures and summary together, in one
        transaction, so the three never describe different mappings.

        categories: position, feature, label, category, code, status, error, raw, merge_rule.
        steps: the saturation_steps columns after method. summary: the saturation_summary columns after
        method, JSON columns given as Python objects.
        """
        keys = {"run_id": run_id, "explainer": explainer, "method": method}
        now = _now()
        row = {
            **keys,
            **{k: json.dumps(v) if k in self._SATURATION_JSON else v for k, v in summary.items()},
            "created_at": now,
        }
        tables = {
            "categories": pa.Table.from_pandas(
                categories.assign(**keys, created_at=now).astype({"category": "Int32"}), preserve_index=False
            ),
            "saturation_steps": pa.Table.from_pandas(steps.assign(**keys), preserve_index=False),
            "saturation_summary": pa.Table.from_pylist([row]),
        }
        with self._transaction():
            for name, table in tables.items():
                self.con.execute(
                    f"DELETE FROM {name} WHERE run_id = ? AND explainer = ? AND method = ?", list(keys.values())
                )
                self._insert(name, table)

    def categories(self, run_id: str, explainer: str, method: str) -> pd.DataFrame:
        sql = "SELECT * FROM categories WHERE run_id = ? AND explainer = ? AND method = ? ORDER BY position"
        return self.con.execute(sql, [run_id, explainer, method]).df()

    def saturation_steps(self, run_id: str, explainer: str, method: str) -> pd.DataFrame:
        sql = "SELECT * FROM saturation_steps WHERE run_id = ? AND explainer = ? AND method = ? ORDER BY step"
        return self.con.execute(sql, [run_id, explainer, method]).df()

    def saturation_summaries(self, run_id: str) -> list[dict]:
        """Every stored saturation summary of the run, JSON columns decoded."""
        frame = self.con.execute(
            "SELECT * FROM saturation_summary WHERE run_id = ? ORDER BY explainer, method", [run_id]
        ).df()
        rows = frame.to_dict("records")
        for row in rows:
            for key in self._SATURATION_JSON:
                row[key] = json.loads(row[key]) if row[key] is not None else None
        return rows

    # ---- reads for reports and exports (this section belongs to the report and export modules)

    def llm_calls(
        self, run_id: str | None = None, purpose: str | None = None, feature: int | None = None, limit: int = 20
    ) -> pd.DataFrame:
        """The latest logged LLM calls, newest first, optionally of one run, purpose or feature."""
        where, args = [], []
        for col, value in (("run_id", run_id), ("purpose", purpose), ("feature", feature)):
            if value is not None:
                where.append(f"{col} = ?")
                args.append(value)
        sql = (
            "SELECT * FROM llm_calls"
            + (f" WHERE {' AND '.join(where)}" if where else "")
            + " ORDER BY call_id DESC LIMIT ?"
        )
        return self.con.execute(sql, args + [limit]).df()

    def stored_counts(self) -> dict[str, int]:
        """Rows a user cares about, project-wide: runs, labels, scores, logged LLM calls."""
        q = {
            "runs": "SELECT count(*) FROM runs",
            "labels": "SELECT count(*) FROM explanations WHERE status = 'ok'",
            "scored features": "SELECT count(DISTINCT (run_id, explainer, scorer, feature)) FROM scores",
            "logged LLM calls": "SELECT count(*) FROM llm_calls",
        }
        return {what: self._one(sql)[0] for what, sql in q.items()}

    def table_counts(self, run_id: str) -> dict[str, int]:
        return {t: self._one(f"SELECT count(*) FROM {t} WHERE run_id = ?", [run_id])[0] for t in GATHER_TABLES}

    def table_names(self) -> list[str]:
        """Every table in the file, so later stages' tables (saturation) are exported without a list to keep."""
        rows = self.con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' AND table_type = 'BASE "
            "TABLE' ORDER BY 1"
        ).fetchall()
        return [r[0] for r in rows]

    def table_reader(self, name: str, run_id: str, batch_rows: int = 65_536) -> pa.RecordBatchReader:
        """A table's rows of one run, streamed in Arrow batches so memory stays flat for big tables.

        Tables without a run_id column (meta, llm_calls: the response cache is shared by runs) come whole.
        Read the reader to the end before the next query on this store.
        """
        if name not in self.table_names():
            raise AutointerpError(f"no table '{name}' in {self.path}", f"choose from: {', '.join(self.table_names())}")
        columns = self.con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = 'main' AND table_name = ?", [name]
        ).fetchall()
        if ("run_id",) in columns:
            return self.con.sql(f'SELECT * FROM "{name}" WHERE run_id = ?', params=[run_id]).to_arrow_reader(batch_rows)
        return self.con.sql(f'SELECT * FROM "{name}"').to_arrow_reader(batch_rows)

    def latest_explainer(self, run_id: str) -> str | None:
        row = self._one(
            "SELECT explainer FROM explanations WHERE run_id = ? ORDER BY created_at DESC, explainer LIMIT 1", [run_id]
        )
        return row[0] if row else None

    def prompt_hashes(self, run_id: str) -> pd.DataFrame:
        """Which prompt files produced this run's labels and scores: stage, explainer, judge, prompt_hash, rows."""
        return self.con.execute(
            "SELECT 'explain' AS stage, explainer, explainer AS judge, prompt_hash, count(*) AS n FROM explanations "
            "WHERE run_id = ? GROUP BY ALL "
            "UNION ALL SELECT scorer, explainer, judge, prompt_hash, count(DISTINCT feature) FROM scores WHERE run_id "
            "= ? GROUP BY ALL "
            "ORDER BY stage, explainer, judge, prompt_hash",
            [run_id, run_id],
        ).df()

    def llm_usage(self, run_id: str | None = None) -> pd.DataFrame:
        """Logged LLM calls per run, provider, model and purpose (the run's only, when given). Calls
        logged before calls carried a run id have run_id NULL.

        cost_usd is the sum over calls with a known price; priced counts them.
        """
        where, args = ("WHERE run_id = ?", [run_id]) if run_id is not None else ("", [])
        return self.con.execute(
            "SELECT run_id, provider, model, purpose, count(*) AS calls, count(*) FILTER (WHERE error IS NOT NULL) AS "
            "failed, "
            "coalesce(sum(prompt_tokens), 0) AS prompt_tokens, coalesce(sum(completion_tokens), 0) AS "
            "completion_tokens, "
            f"sum(cost_usd) AS cost_usd, count(cost_usd) AS priced FROM llm_calls {where} GROUP BY ALL ORDER BY ALL",
            args,
        ).df()


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
        self._next_id = self.store._one("SELECT coalesce(max(call_id), 0) + 1 FROM llm_calls")[0]
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
            self.store._replace("llm_calls", self._arrow(rows), "call_id IN (SELECT call_id FROM incoming)", [])
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
        row = self.store._one(
            "SELECT response, provider, model, prompt_tokens, completion_tokens, latency_s, retries, cost_usd, raw, "
            "call_id "
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
        self.store._insert(
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
        with self.store._transaction():
            self.store.con.execute(
                "INSERT INTO llm_batches VALUES (?, NULL, ?, ?, ?, ?, 'submitting', ?, ?, NULL, NULL)",
                [record.local_id, provider, model, base_url, self.run_id, len(reqs), record.submitted_at],
            )
            self.store._insert("llm_batch_requests", requests)

    def batch_update(self, local_id: str, status: str, batch_id: str | None = None, detail: str | None = None) -> None:
        """'submitted' (with the provider's id), or how it ended: 'ended', 'failed', 'lost'."""
        ended = _now() if status != "submitted" else None
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
        return pa.table([pa.array([r[f.name] for r in rows], f.type) for f in cls._SCHEMA], schema=cls._SCHEMA)


# ------------------------------------------------------------------------------------- the web app's reads


class Browser:
    """The queries of `autointerp serve`, over one read-only connection: every one bounded (LIMIT/OFFSET,
    a page's feature ids, or aggregates with a fixed number of rows), its parameters bound ($name). The
    only text spliced into SQL is chosen from the fixed fragments below (_TABLE_FILTERS, SORT_KEYS).
    Unlike Store(read_only=True), an older schema is refused rather than upgraded: a browser writes nothing."""

    SORT_KEYS = {
        "feature": "f.feature",
        "density": "f.density",
        "activation": "f.max_activation",
        "score": "s.value",
        "label": "x.label",
    }
    TOKEN_IDS_OR = 16  # up to this many ids are tested one by one (list_contains): ~30x faster than list_has_any

    _RUNS = "SELECT run_id, model, hookpoint, d_sae, updated_at FROM runs ORDER BY updated_at DESC LIMIT 100"
    # The feature table: features, the chosen explainer's label, and one scorer's headline for sorting and filtering.
    _TABLE_FROM = """
FROM features f
LEFT JOIN explanations x ON x.run_id = f.run_id AND x.feature = f.feature AND x.explainer = $explainer
LEFT JOIN (SELECT feature, max(value) AS value, max(ci_low) AS ci_low FROM scores
           WHERE run_id = $run AND explainer = $explainer AND scorer = $scorer AND label_source = 'true'
           GROUP BY feature) s ON s.feature = f.feature
WHERE f.run_id = $run"""
    _TABLE_FILTERS = {  # name → fragment; each is added when its parameter is given
        "q": " AND contains(lower(x.label), lower($q))",
        "token": " AND f.feature IN (SELECT DISTINCT feature FROM examples WHERE run_id = $run AND kind = 'top' AND "
        "({match}))",
        "token_one": "list_contains(token_ids, $t{i})",
        "token_many": "list_has_any(token_ids, $token_ids)",
        "min": " AND s.value >= $min",
        "low": " AND s.ci_low >= $low",
        "dead=1": " AND f.dead",
        "dead=0": " AND NOT f.dead",
        "dense=1": " AND f.dense",
        "dense=0": " AND NOT f.dense",
    }

    def __init__(self, project: str | Path, run_id: str | None = None):
        self.path = db_path(project)
        if not self.path.exists():
            raise AutointerpError(
                f"no database at {self.path}", "run `autointerp gather` (or `autointerp run`) for this project first"
            )
        self.con = _connect(self.path, read_only=True)
        try:
            applied = len(_applied(self.con))
            if applied < SCHEMA_VERSION:
                raise AutointerpError(
                    f"{self.path} has an older schema than this autointerp reads",
                    f"upgrade it once with `autointerp runs --project {Path(project)}`, then serve it",
                )
            known = [r[0] for r in self.runs()]
            if not known:
                raise AutointerpError(f"no run in {self.path}", "run `autointerp gather` first")
            if run_id is not None and run_id not in known:
                raise AutointerpError(f"no run '{run_id}' in {self.path}", f"pass one of: {', '.join(known)}")
        except BaseException:
            self.con.close()
            raise
        self.default_run = run_id or known[0]

    def close(self) -> None:
        self.con.close()

    def _query(self, sql: str, **params) -> list[tuple]:
        cur = self.con.cursor()  # a connection of its own per call: safe from the server's threads
        try:
            return cur.execute(sql, params or None).fetchall()
        finally:
            cur.close()

    def runs(self) -> list[tuple]:
        return self._query(self._RUNS)

    def n_features(self, run: str) -> int:
        return self._query("SELECT count(*) FROM features WHERE run_id = $run", run=run)[0][0]

    def explainers(self, run: str) -> list[tuple]:
        """(explainer, labels, latest), the one that labelled most first: the default."""
        return self._query(
            """
SELECT explainer, count(*) AS n, max(created_at) AS latest FROM explanations WHERE run_id = $run
GROUP BY explainer ORDER BY n DESC, latest DESC, explainer LIMIT 100""",
            run=run,
        )

    def scorers(self, run: str, explainer: str) -> list[str]:
        return [
            r[0]
            for r in self._query(
                """
SELECT DISTINCT scorer FROM scores WHERE run_id = $run AND explainer = $explainer AND label_source = 'true'
ORDER BY scorer LIMIT 50""",
                run=run,
                explainer=explainer,
            )
        ]

    def token_ids(self, run: str, token: str) -> list[int]:
        """The vocabulary entries a typed token means: case and the leading space folded."""
        return [
            r[0]
            for r in self._query(
                """
SELECT token_id FROM vocab
WHERE run_id = $run AND (token = $token OR lower(trim(coalesce(piece, token))) = lower(trim($token)))
ORDER BY token_id LIMIT 1000""",
                run=run,
                token=token,
            )
        ]

    def feature_table(
        self,
        run: str,
        explainer: str | None,
        scorer: str | None,
        *,
        sort: str,
        descending: bool,
        limit: int,
        offset: int,
        q: str = "",
        token_ids: list[int] | None = None,
        min: float | None = None,
        low: float | None = None,
        dead: bool | None = None,
        dense: bool | None = None,
    ) -> tuple[int, list[tuple]]:
        """(features matching, one page of (feature, label, status, density, n_firing, max_activation,
        dead, dense)). token_ids: features whose top windows hold one of them; min and low filter on
        the scorer's value and interval."""
        args: dict = {"run": run, "explainer": explainer, "scorer": scorer}
        filters = []
        if q:
            filters.append(self._TABLE_FILTERS["q"])
            args["q"] = q
        if token_ids is not None:
            if not token_ids:
                match = "false"
            elif len(token_ids) <= self.TOKEN_IDS_OR:
                match = " OR ".join(self._TABLE_FILTERS["token_one"].format(i=i) for i in range(len(token_ids)))
                args.update({f"t{i}": tid for i, tid in enumerate(token_ids)})
            else:
                match = self._TABLE_FILTERS["token_many"]
                args["token_ids"] = token_ids
            filters.append(self._TABLE_FILTERS["token"].format(match=match))
        for name, value in (("min", min), ("low", low)):
            if value is not None:
                filters.append(self._TABLE_FILTERS[name])
                args[name] = value
        for name, value in (("dead", dead), ("dense", dense)):
            if value is not None:
                filters.append(self._TABLE_FILTERS[f"{name}={int(value)}"])
        where = "".join(filters)
        total = self._query("SELECT count(*)" + self._TABLE_FROM + where, **args)[0][0]
        rows = self._query(
            "SELECT f.feature, x.label, x.status, f.density, f.n_firing, f.max_activation, f.dead, f.dense"
            + self._TABLE_FROM
            + where
            + f"\nORDER BY {self.SORT_KEYS[sort]} {'DESC' if descending else 'ASC'} NULLS LAST, f.feature\nLIMIT "
            "$limit OFFSET $offset",
            **args,
            limit=limit,
            offset=offset,
        )
        return total, rows

    def page_scores(self, run: str, explainer: str, features: list[int]) -> list[tuple]:
        """(feature, scorer, value, ci_low, ci_high, p_value) of the own labels of a page's features."""
        return self._query(
            """
SELECT feature, scorer, max(value), max(ci_low), max(ci_high), max(p_value) FROM scores
WHERE run_id = $run AND explainer = $explainer AND label_source = 'true' AND feature IN (SELECT unnest($features))
GROUP BY feature, scorer""",
            run=run,
            explainer=explainer,
            features=features,
        )

    def feature(self, run: str, feature: int) -> tuple | None:
        """(feature, n_firing, density, max_activation, mean_activation, dead, dense), or None."""
        rows = self._query(
            """
SELECT feature, n_firing, density, max_activation, mean_activation, dead, dense FROM features
WHERE run_id = $run AND feature = $feature""",
            run=run,
            feature=feature,
        )
        return rows[0] if rows else None

    def neighbours(self, run: str, feature: int) -> tuple[int | None, int | None]:
        return self._query(
            """
SELECT (SELECT max(feature) FROM features WHERE run_id = $run AND feature < $feature),
       (SELECT min(feature) FROM features WHERE run_id = $run AND feature > $feature)""",
            run=run,
            feature=feature,
        )[0]

    def feature_labels(self, run: str, feature: int) -> list[tuple]:
        return self._query(
            """
SELECT explainer, label, status, error FROM explanations WHERE run_id = $run AND feature = $feature
ORDER BY created_at DESC, explainer LIMIT 100""",
            run=run,
            feature=feature,
        )

    def feature_scores(self, run: str, feature: int) -> list[tuple]:
        return self._query(
            """
SELECT explainer, scorer, label_source, metric, value, ci_low, ci_high, p_value, n, status, judge, error FROM scores
WHERE run_id = $run AND feature = $feature ORDER BY explainer, scorer, label_source DESC, metric LIMIT 500""",
            run=run,
            feature=feature,
        )

    def feature_windows(self, run: str, feature: int) -> list[tuple]:
        """(split, kind, rank, quantile, max_activation, token_ids, activations) of its top and quantile windows."""
        return self._query(
            """
SELECT split, kind, rank, quantile, max_activation, token_ids, activations FROM examples
WHERE run_id = $run AND feature = $feature AND kind IN ('top', 'quantile')
ORDER BY kind DESC, split, quantile, rank LIMIT 200""",
            run=run,
            feature=feature,
        )

    def pieces(self, run: str, ids: list[int]) -> dict[int, str]:
        """Readable text of these token ids."""
        if not ids:
            return {}
        return dict(
            self._query(
                "SELECT token_id, coalesce(piece, token) FROM vocab WHERE run_id = $run AND token_id IN (SELECT "
                "unnest($ids))",
                run=run,
                ids=ids,
            )
        )

    def saturation_summaries(self, run: str) -> list[tuple]:
        return self._query(
            """
SELECT explainer, method, n_labels, n_mapped, n_categories, saturated FROM saturation_summary
WHERE run_id = $run ORDER BY explainer, method LIMIT 20""",
            run=run,
        )

    def saturation_curve(self, run: str, explainer: str, method: str, points: int) -> list[tuple]:
        """(step, total, categories, coverage, chao1, chao1_low, chao1_high), thinned to about `points`
        steps (the last kept)."""
        return self._query(
            """
WITH s AS (SELECT step, total, n_categories, coverage, chao1, chao1_low, chao1_high,
                  count(*) OVER () AS n, row_number() OVER (ORDER BY step) AS i
           FROM saturation_steps WHERE run_id = $run AND explainer = $explainer AND method = $method)
SELECT step, total, n_categories, coverage, chao1, chao1_low, chao1_high FROM s
WHERE (i - 1) % greatest(1, ceil(n / $points)::BIGINT) = 0 OR i = n ORDER BY step LIMIT $points + 2""",
            run=run,
            explainer=explainer,
            method=method,
            points=points,
        )

    def score_summaries(self, run: str, explainer: str) -> list[tuple]:
        return self._query(
            """
SELECT scorer, metric, chance, n_features, n_ok, n_failed, median, q25, q75, n_confident,
       shuffled_median, gap, gap_low, gap_high, verdict
FROM score_summaries WHERE run_id = $run AND explainer = $explainer ORDER BY scorer LIMIT 50""",
            run=run,
            explainer=explainer,
        )

    def score_histograms(self, run: str, explainer: str, bins: int) -> list[tuple]:
        """(scorer, label_source, lo, hi, bin, count): `bins` bins per scorer over the range both label
        sources share."""
        return self._query(
            """
WITH v AS (SELECT scorer, label_source, value FROM scores
           WHERE run_id = $run AND explainer = $explainer AND value IS NOT NULL AND isfinite(value)),
     r AS (SELECT scorer, min(value) AS lo, max(value) AS hi FROM v GROUP BY scorer)
SELECT v.scorer, v.label_source, r.lo, r.hi,
       least($bins - 1,
             CASE WHEN r.hi > r.lo THEN floor((v.value - r.lo) / (r.hi - r.lo) * $bins) ELSE 0 END)::INTEGER AS bin,
       count(*) AS n
FROM v JOIN r USING (scorer) GROUP BY ALL ORDER BY v.scorer, v.label_source, bin LIMIT 5000""",
            run=run,
            explainer=explainer,
            bins=bins,
        )


def _effects_arrow(run_id: str, effects: pd.DataFrame | None) -> pa.Table:
    effects = (
        effects
        if effects is not None
        else pd.DataFrame({"feature": [], "kind": [], "rank": [], "token_id": [], "value": []})
    )
    return pa.table(
        {
            "run_id": pa.array([run_id] * len(effects), pa.string()),
            "feature": pa.array(effects.feature.to_numpy(), pa.int32()),
            "kind": pa.array(effects.kind.astype(str).to_numpy() if len(effects) else [], pa.string()),
            "rank": pa.array(effects["rank"].to_numpy(), pa.int32()),
            "token_id": pa.array(effects.token_id.to_numpy(), pa.int32()),
            "value": pa.array(effects.value.to_numpy(), pa.float64()),
        }
    )


def _connect(path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    try:
        return duckdb.connect(str(path), read_only=read_only)
    except duckdb.IOException as e:
        if "lock" in str(e).lower():
            holder = re.search(r"PID (\d+)", str(e))
            raise AutointerpError(
                f"{path} is locked by another process" + (f" (PID {holder.group(1)})" if holder else ""),
                "wait for that process to finish or stop it, or use a different --project directory",
            ) from None
        raise AutointerpError(
            f"cannot open {path}: {e}", "check the file is a DuckDB database and that you may read and write it"
        ) from None
    except duckdb.Error as e:
        raise AutointerpError(
            f"{path} is not a usable DuckDB file: {e}", "move it aside; autointerp will create a new one"
        ) from None


def _applied(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Names of the migrations this database has, in order."""
    tables = {
        r[0]
        for r in con.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'").fetchall()
    }
    if "schema_migrations" in tables:
        return [r[0] for r in con.execute("SELECT name FROM schema_migrations ORDER BY version").fetchall()]
    if "meta" not in tables:
        return []  # a new file
    row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall()
    version = int(row[0][0]) if row else 1
    if version != 1:
        raise AutointerpError(
            f"database schema version {version} has no migration record",
            "open it with the autointerp version that wrote it",
        )
    return [MIGRATIONS[0][0]]  # written before migrations were recorded: the initial schema


def _check_known(applied: list[str], path: Path) -> None:
    known = [name for name, _ in MIGRATIONS]
    if applied != known[: len(applied)]:
        from autointerp import __version__

        unknown = [a for a in applied if a not in known]
        raise AutointerpError(
            f"{path} was written by a newer autointerp than this one ({__version__}): it has schema migrations "
            + (", ".join(repr(a) for a in unknown) if unknown else "in an order")
            + " this version does not know",
            "upgrade autointerp (pip install -U autointerp) to open it; nothing in the file was changed",
        )


def _pending_migrations(path: Path) -> bool:
    if not path.exists():
        return False
    con = _connect(path, read_only=True)
    try:
        applied = _applied(con)
        _check_known(applied, path)
        return len(applied) < len(MIGRATIONS)
    finally:
        con.close()


def migrate(con: duckdb.DuckDBPyConnection, path: Path) -> list[str]:
    """Apply the migrations this database lacks, each in one transaction with its record; returns their names.
    A database from a newer autointerp is refused and left as it is."""
    applied = _applied(con)
    _check_known(applied, path)
    done = []
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name VARCHAR, applied_at TIMESTAMP)"
    )
    recorded = {r[0] for r in con.execute("SELECT version FROM schema_migrations").fetchall()}
    for version, (name, sql) in enumerate(MIGRATIONS, 1):
        if version <= len(applied) and version in recorded:
            continue
        con.execute("BEGIN TRANSACTION")
        try:
            if version > len(applied):
                con.execute(sql)
                done.append(name)
            con.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", [version, name, _now()])
            con.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", [str(version)])
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    return done


def _fingerprint(cache_key: str) -> int:
    """A 64-bit fingerprint of a cache key, stable within this process (the index lives no longer)."""
    return hash(cache_key) & 0xFFFFFFFFFFFFFFFF


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _features_arrow(run_id: str, df: pd.DataFrame) -> pa.Table:
    return pa.table(
        {
            "run_id": pa.array([run_id] * len(df)),
            "feature": pa.array(df.feature.to_numpy(), pa.int32()),
            "n_firing": pa.array(df.n_firing.to_numpy(), pa.int64()),
            "density": pa.array(df.density.to_numpy(), pa.float64()),
            "max_activation": pa.array(df.max_activation.to_numpy(), pa.float64()),
            "mean_activation": pa.array(df.mean_activation.to_numpy(), pa.float64()),
            "dead": pa.array(df.dead.to_numpy(), pa.bool_()),
            "dense": pa.array(df.dense.to_numpy(), pa.bool_()),
            "histogram": _list_array(df.histogram, pa.int64()),
        }
    )


def _examples_arrow(run_id: str, table: pa.Table) -> pa.Table:
    return table.add_column(0, "run_id", pa.array([run_id] * len(table), pa.string()))


def _list_array(column: pd.Series, value_type: pa.DataType) -> pa.Array:
    """A list column from a Series of 1-D arrays (None allowed), built from one flat buffer."""
    items = list(column)
    lengths = np.array([0 if v is None else len(v) for v in items], dtype=np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    present = [np.asarray(v) for v in items if v is not None]
    flat = np.concatenate(present) if present else np.array([])
    mask = pa.array([v is None for v in items])
    return pa.ListArray.from_arrays(
        pa.array(offsets), pa.array(flat, value_type), mask=mask if any(v is None for v in items) else None
    )
