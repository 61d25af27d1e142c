"""Store: the one DuckDB file of a project directory, and every read and write of the pipeline's
stages and reports (the schema is in migrations.py, the LLM call journal in calls.py, the web
app's queries in browser.py).

Writes are bulk (Arrow tables, never row by row) and each stage's write for a
run replaces that run's earlier rows inside one transaction: re-running a run id
is idempotent, and a failure leaves what was stored before untouched.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa

from autointerp.errors import AutointerpError
from autointerp.store.db import connect, db_path, first_row, insert_rows, replace_rows, transaction, utc_now
from autointerp.store.migrations import VOCAB_PIECES, add_score_columns, migrate, pending_migrations

if TYPE_CHECKING:
    from autointerp.records import FeatureSnippets


# Tables holding one run's gather output, replaced together.
GATHER_TABLES = ("features", "examples", "contexts", "documents", "vocab", "output_effects")
# Tables derived from a run's examples: a new gather of the run deletes them (the LLM call log stays,
# so labelling the same examples again is served from the cache).
DERIVED_TABLES = (
    "explanations",
    "scores",
    "score_summaries",
    "categories",
    "saturation_steps",
    "saturation_summary",
    "steering",
)


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


def remove_database(project: str | Path) -> None:
    """Delete a project's database (closed) and its write-ahead log; the directory too when that leaves it empty."""
    path = db_path(project)
    for file in (path, path.with_name(path.name + ".wal")):
        file.unlink(missing_ok=True)
    try:
        path.parent.rmdir()
    except OSError:
        pass  # other files (configs, reports) stay


def derived_loss(counts: dict[str, int]) -> str:
    """Store.derived_counts in words ("16 labels, 96 scores, 4 score summaries and 32 saturation rows");
    "" when there are none."""
    saturation = sum(counts.get(t, 0) for t in ("categories", "saturation_steps", "saturation_summary"))
    parts = [
        f"{n:,} {one if n == 1 else many}"
        for n, one, many in (
            (counts.get("explanations", 0), "label", "labels"),
            (counts.get("scores", 0), "score", "scores"),
            (counts.get("score_summaries", 0), "score summary", "score summaries"),
            (saturation, "saturation row", "saturation rows"),
            (counts.get("steering", 0), "steering example", "steering examples"),
        )
        if n
    ]
    return " and ".join([", ".join(parts[:-1]), parts[-1]]) if len(parts) > 1 else "".join(parts)


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
        if read_only and pending_migrations(self.path):
            with Store(project):  # upgrade first: a read-only connection cannot
                pass
        self.con = connect(self.path, read_only)
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
        drop_derived: bool = True,
    ) -> None:
        """Replace everything the gather stage stored for `run.run_id`, atomically, with the rows derived
        from its old examples (labels, scores, saturation). drop_derived=False refuses, storing nothing,
        when there are such rows (they may have appeared since the caller looked: see derived_counts)."""
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
        now = utc_now()
        with transaction(self.con):
            if not drop_derived and (lost := derived_loss(self.derived_counts(run.run_id))):
                raise AutointerpError(
                    f"run '{run.run_id}' now holds {lost}, which a new gather would delete; nothing was stored",
                    "re-run with --regather (Python: RunConfig(regather=True)) to delete them, or pass a new --run-id",
                )
            created = first_row(self.con, "SELECT created_at FROM runs WHERE run_id = ?", [run.run_id])
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
                insert_rows(self.con, name, table)
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
        """feature, kind (promoted | suppressed | amplified), rank, token_id, token, piece (the text it
        stands for), value; empty when none were computed."""
        where = "" if features is None else "AND e.feature IN (SELECT UNNEST(?::INTEGER[]))"
        args = [run_id] + ([list(map(int, features))] if features is not None else [])
        return self.con.execute(
            f"""SELECT e.feature, e.kind, e.rank, e.token_id, v.token, coalesce(v.piece, v.token) AS piece, e.value
                FROM output_effects e
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
        """Stored windows of these features as typed records, tokens as the text each owns in its source.

        split limits to one split; max_per_kind caps rows per (feature, split, kind) by rank,
        so a stage loads only what it shows; quantile_bins keeps, of the quantile samples, only the
        first of each listed bin.
        """
        from autointerp.records import FeatureSnippets, Snippet, piece_tables, text_pieces, vocab_style

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
                "SELECT feature, split, kind, context_id, token_ids, activations, max_activation, quantile, text, "
                "text_ends FROM "
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
        for feature, split_, kind, ctx, ids, acts, peak, quantile, text, ends in ex:
            if text is not None:
                pieces = text_pieces(text, ends)
            else:  # gathered before windows kept their text
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
        with transaction(self.con):
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
            last = first_row(
                self.con,
                "SELECT coalesce(max(position), 0) FROM explanations WHERE run_id = ? AND explainer = ?",
                [run_id, explainer],
            )[0]
            new = ~rows.feature.isin(list(kept))
            position = rows.feature.map(kept).astype("Int64")
            position[new] = last + np.arange(1, int(new.sum()) + 1)
            frame = rows.assign(
                run_id=run_id, explainer=explainer, position=position.astype("int32"), created_at=utc_now()
            )
            replace_rows(
                self.con,
                "explanations",
                pa.Table.from_pandas(frame, preserve_index=False),
                "run_id = ? AND explainer = ? AND feature IN (SELECT feature FROM incoming)",
                [run_id, explainer],
                own_transaction=False,
            )

    def explanations(self, run_id: str, explainer: str | None = None) -> pd.DataFrame:
        sql, args = "SELECT * FROM explanations WHERE run_id = ?", [run_id]
        if explainer is not None:
            sql, args = sql + " AND explainer = ?", args + [explainer]
        return self.con.execute(sql + " ORDER BY feature", args).df()

    def write_agreement(self, run_id: str, digest: str, agreement: dict) -> None:
        """Store the agreement of explainers agreement["a"] and ["b"] (compare.Agreement's fields),
        computed on the label sets `digest` names, replacing an earlier one of the same pair."""
        row = {"run_id": run_id, "digest": digest, **agreement, "created_at": utc_now()}
        columns = ", ".join(row)
        with transaction(self.con):
            self.con.execute(
                "DELETE FROM label_agreements WHERE run_id = ? AND a = ? AND b = ?", [run_id, row["a"], row["b"]]
            )
            self.con.execute(
                f"INSERT INTO label_agreements ({columns}) VALUES ({', '.join('?' * len(row))})", list(row.values())
            )

    def agreement(self, run_id: str, a: str, b: str, digest: str) -> dict | None:
        """The stored agreement of a and b computed on the label sets `digest` names, else None."""
        cur = self.con.execute(
            "SELECT a, b, n, matched_median, mismatched_median, match_rate, chance, p_value, n_permutations "
            "FROM label_agreements WHERE run_id = ? AND a = ? AND b = ? AND digest = ?",
            [run_id, a, b, digest],
        )
        row = cur.fetchone()
        return None if row is None else dict(zip([d[0] for d in cur.description], row))

    def write_steering(self, run_id: str, origin: str, row: dict) -> None:
        """Store one steering experiment (the steering table's columns but run_id, origin and created_at).
        origin "run": the run's example, which replaces the one an earlier run stored; "steer": one a
        user asked for, kept beside the others."""
        row = {"run_id": run_id, "origin": origin, **row, "created_at": utc_now()}
        with transaction(self.con):
            if origin == "run":
                self.con.execute("DELETE FROM steering WHERE run_id = ? AND origin = 'run'", [run_id])
            self.con.execute(
                f"INSERT INTO steering ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", list(row.values())
            )

    def steering(self, run_id: str) -> pd.DataFrame:
        """The run's steering experiments, newest first (none in a database opened read-only before the
        migration that adds them)."""
        if "steering" not in self.table_names():
            return pd.DataFrame()
        return self.con.execute(
            "SELECT * EXCLUDE (run_id) FROM steering WHERE run_id = ? ORDER BY created_at DESC", [run_id]
        ).df()

    def write_triage(self, run_id: str, key: str, rows: pd.DataFrame) -> None:
        """Store triage tests and routes (stages/triage.py; rows: feature, label, value, ci_low, ci_high, n,
        p_value, route) under `key`, replacing those of the same features; tests under another key are
        dropped, as a re-run with other fitting windows makes them stale."""
        columns = ["feature", "label", "value", "ci_low", "ci_high", "n", "p_value", "route"]
        frame = rows.reindex(columns=columns).assign(run_id=run_id, key=key, created_at=utc_now())
        frame = frame.astype(
            {"feature": "int32", "label": "string", "route": "string", "n": "Int32"}
            | dict.fromkeys(["value", "ci_low", "ci_high", "p_value"], "float64")
        )
        with transaction(self.con):
            self.con.execute("DELETE FROM triage WHERE run_id = ? AND key <> ?", [run_id, key])
            replace_rows(
                self.con,
                "triage",
                pa.Table.from_pandas(frame, preserve_index=False),
                "run_id = ? AND feature IN (SELECT feature FROM incoming)",
                [run_id],
                own_transaction=False,
            )

    def triage(self, run_id: str, key: str | None = None) -> pd.DataFrame:
        """The run's triage tests (under `key`, when given), by feature; none before the migration."""
        if "triage" not in self.table_names():
            return pd.DataFrame(columns=["feature", "label", "value", "ci_low", "ci_high", "n", "p_value", "route"])
        sql, args = "SELECT * EXCLUDE (run_id) FROM triage WHERE run_id = ?", [run_id]
        if key is not None:
            sql, args = sql + " AND key = ?", args + [key]
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
        frame = rows.assign(run_id=run_id, explainer=explainer, scorer=scorer, created_at=utc_now())
        calls = frame.pop("call_ids") if "call_ids" in frame else pd.Series([[]] * len(frame))
        table = pa.Table.from_pandas(frame, preserve_index=False).append_column(
            "call_ids", pa.array(list(calls), pa.list_(pa.int64()))
        )
        replace_rows(
            self.con,
            "scores",
            table,
            "run_id = ? AND explainer = ? AND scorer = ? AND label_source = ? AND feature IN (SELECT feature FROM "
            "incoming)",
            [run_id, explainer, scorer, label_source],
        )

    def ensure_score_columns(self, scorers: list[str]) -> list[str]:
        """Give the feature_summary view its columns (<scorer>, _low, _high, _p) for each of these
        scorers it lacks, in one transaction; returns the scorers added. The score stage calls it
        before writing scores, so a scorer added after a database was made gets its columns there."""
        with transaction(self.con):
            return add_score_columns(self.con, list(scorers))

    def delete_scores(
        self, run_id: str, explainer: str, scorers: list[str], label_source: str, keep: list[int] | None = None
    ) -> None:
        """Delete these scorers' rows of one label source, but those of the features in `keep`."""
        for scorer in scorers:
            self.con.execute(
                "DELETE FROM scores WHERE run_id = ? AND explainer = ? AND scorer = ? AND label_source = ? AND NOT "
                "list_contains(?, feature)",
                [run_id, explainer, scorer, label_source, [int(f) for f in keep or []]],
            )

    def score_keys(self, run_id: str, explainer: str, scorer: str, label_source: str) -> dict[int, str]:
        """Feature → the key of its stored score, for the rows that came out ok or undefined (a failed score
        is asked again)."""
        rows = self.con.execute(
            "SELECT feature, score_key FROM scores WHERE run_id = ? AND explainer = ? AND scorer = ? AND "
            "label_source = ? AND status IN ('ok', 'undefined') AND score_key IS NOT NULL",
            [run_id, explainer, scorer, label_source],
        ).fetchall()
        return {int(f): key for f, key in rows}

    def scores(self, run_id: str, explainer: str | None = None, scorer: str | None = None) -> pd.DataFrame:
        sql, args = "SELECT * FROM scores WHERE run_id = ?", [run_id]
        for col, value in (("explainer", explainer), ("scorer", scorer)):
            if value is not None:
                sql, args = sql + f" AND {col} = ?", args + [value]
        return self.con.execute(sql + " ORDER BY scorer, feature, label_source, metric", args).df()

    def write_score_summaries(self, run_id: str, explainer: str, rows: pd.DataFrame) -> None:
        """Replace the summaries of these scorers (one row each: see the score_summaries columns)."""
        table = pa.Table.from_pandas(
            rows.assign(run_id=run_id, explainer=explainer, created_at=utc_now()), preserve_index=False
        )
        replace_rows(
            self.con,
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
        row = first_row(
            self.con,
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

    # ---- saturation (this section belongs to the saturation stage)

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
        now = utc_now()
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
        with transaction(self.con):
            for name, table in tables.items():
                self.con.execute(
                    f"DELETE FROM {name} WHERE run_id = ? AND explainer = ? AND method = ?", list(keys.values())
                )
                insert_rows(self.con, name, table)

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
        return {what: first_row(self.con, sql)[0] for what, sql in q.items()}

    def table_counts(self, run_id: str) -> dict[str, int]:
        return {
            t: first_row(self.con, f"SELECT count(*) FROM {t} WHERE run_id = ?", [run_id])[0] for t in GATHER_TABLES
        }

    def derived_counts(self, run_id: str) -> dict[str, int]:
        """Rows of each table derived from a run's examples (DERIVED_TABLES): what a new gather of it deletes."""
        return {
            t: first_row(self.con, f"SELECT count(*) FROM {t} WHERE run_id = ?", [run_id])[0] for t in DERIVED_TABLES
        }

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

    def default_explainer(self, run_id: str) -> str | None:
        """The explainer that labelled the most features (then the latest): what a reader of the run wants
        first. The latest alone would be a 16-feature LLM sample beside a fully labelled dictionary."""
        row = first_row(
            self.con,
            "SELECT explainer FROM explanations WHERE run_id = ? GROUP BY explainer "
            "ORDER BY count(*) FILTER (status = 'ok') DESC, max(created_at) DESC, explainer LIMIT 1",
            [run_id],
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

        cost_usd is the sum over calls with a known price; priced counts them. cache_read_tokens: of the
        prompt tokens, those the provider's prompt cache served.
        """
        where, args = ("WHERE run_id = ?", [run_id]) if run_id is not None else ("", [])
        return self.con.execute(
            "SELECT run_id, provider, model, purpose, count(*) AS calls, count(*) FILTER (WHERE error IS NOT NULL) AS "
            "failed, "
            "coalesce(sum(prompt_tokens), 0) AS prompt_tokens, coalesce(sum(cache_read_tokens), 0) AS "
            "cache_read_tokens, coalesce(sum(completion_tokens), 0) AS completion_tokens, "
            f"sum(cost_usd) AS cost_usd, count(cost_usd) AS priced FROM llm_calls {where} GROUP BY ALL ORDER BY ALL",
            args,
        ).df()


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
