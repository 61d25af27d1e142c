"""The DuckDB schema as migrations, and the views derived from it.

Migrations are named, applied in order, each in its own transaction and recorded in
schema_migrations. Never edit one that has shipped; append a new one. A database written before
migrations existed (meta schema_version 1, no schema_migrations table) has exactly migration 1.

The feature_summary view has four columns per scorer named in the score_columns table
(feature_summary_sql); a scorer added later is added there with the view rebuilt
(Store.ensure_score_columns), so databases written before the scorer existed get its column too.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import duckdb

from autointerp.errors import AutointerpError
from autointerp.store.db import connect, utc_now

# A token's readable piece, by the tokenizer style its vocabulary shows (records.vocab_style, in SQL):
# WordPiece continuations lose '##' and other words get a leading space; byte-level BPE's marks
# become the space, newline and tab they stand for; SentencePiece's '▁' becomes a space. Migration 6
# ran it over the stored vocabularies and Store.write_gather runs it on each new one: a change to it
# ships with a new migration that runs it again.
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

# The views of migration 6, as shipped (its scorer columns fixed to these five); superseded by
# migration 8, which rebuilds feature_summary from the score_columns table.
_HEADLINES = ("detection", "fuzzing", "simulation", "embedding", "intervention")
_VIEWS_6 = (
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


def _score_columns(con: duckdb.DuckDBPyConnection) -> None:
    """Migration 8: the scorers with columns in feature_summary as rows, starting with the five of
    migration 6's view in its order, and the view rebuilt from them."""
    con.execute("CREATE TABLE score_columns (scorer VARCHAR PRIMARY KEY, position INTEGER)")
    con.execute(
        "INSERT INTO score_columns SELECT unnest($names), generate_subscripts($names, 1)", {"names": list(_HEADLINES)}
    )
    rebuild_feature_summary(con)


# Each migration is SQL text, or a function given the connection where it must read the database first.
MIGRATIONS: list[tuple[str, str | Callable[[duckdb.DuckDBPyConnection], None]]] = [
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
        + _VIEWS_6,
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
    # The scorers that have columns in feature_summary, as rows (score_columns) rather than a list
    # in migration 6: a scorer added later gets its columns in existing databases. The view is
    # rebuilt from the table.
    ("score columns", _score_columns),
    # How far two explainers' labels agree (views/compare.py), computed where the labels are written
    # and read by the report, which so needs no embedding model. `digest` identifies the two label
    # sets it was computed on: relabelled features make the row stale, and the report recomputes.
    (
        "label agreements",
        """
CREATE TABLE label_agreements (
    run_id VARCHAR, a VARCHAR, b VARCHAR, digest VARCHAR, n INTEGER, matched_median DOUBLE,
    mismatched_median DOUBLE, match_rate DOUBLE, chance DOUBLE, p_value DOUBLE, n_permutations INTEGER,
    created_at TIMESTAMP, PRIMARY KEY (run_id, a, b)
);
""",
    ),
    # What a score row was computed from (the label, the judge and its prompts, the scorer's settings) as
    # one digest: a re-run keeps the rows whose digest it would compute again instead of scoring them anew.
    ("score keys", "ALTER TABLE scores ADD COLUMN score_key VARCHAR;"),
    # Each window's source text, cut from its document through the tokenizer's character offsets, and
    # where each token ends in it (gather/text.py): snippets read as the text they came from. NULL for
    # windows gathered before, which keep their vocabulary pieces, in snippet_text too.
    (
        "window text",
        """
ALTER TABLE examples ADD COLUMN text VARCHAR;
ALTER TABLE examples ADD COLUMN text_ends INTEGER[];
CREATE OR REPLACE VIEW snippet_text AS
SELECT e.run_id, e.feature, e.split, e.kind, e.rank, e.quantile, e.max_activation, e.context_id, e.doc_id, e.doc_offset,
       coalesce(any_value(e.text), string_agg(coalesce(v.piece, v.token), '' ORDER BY t.i)) AS text,
       coalesce(
           any_value(e.text[coalesce(e.text_ends[e.peak], 0) + 1:e.text_ends[e.peak + 1]]),
           max(coalesce(v.piece, v.token)) FILTER (WHERE t.i = e.peak + 1)
       ) AS peak_token
FROM examples e
CROSS JOIN LATERAL (SELECT unnest(e.token_ids) AS token_id, generate_subscripts(e.token_ids, 1) AS i) t
JOIN vocab v ON v.run_id = e.run_id AND v.token_id = t.token_id
GROUP BY ALL;
""",
    ),
    # Steering experiments (subject/steer.py): a feature's decoder direction pushed into the causal LM,
    # the steered continuation beside the unsteered one with the same seed. `origin` is "run" for the run's
    # example (a re-run replaces it) or "steer" for one a user asked for; `label` is the label the feature
    # was picked by, as it read then, and `why` how it was picked.
    (
        "steering",
        """
CREATE TABLE steering (
    run_id VARCHAR, origin VARCHAR, feature INTEGER, explainer VARCHAR, label VARCHAR, why VARCHAR, prompt VARCHAR,
    mode VARCHAR, scale DOUBLE, activation DOUBLE, added_norm DOUBLE, residual_norm DOUBLE, seed BIGINT,
    temperature DOUBLE, max_new_tokens INTEGER, unsteered VARCHAR, steered VARCHAR, created_at TIMESTAMP
);
""",
    ),
    # Triage before an LLM explains (stages/triage.py): each feature's free token label and its detection
    # on explain-split windows the offline explainer did not read, under the key of the windows it read;
    # `label` NULL when there was nothing to test; `route` as the last triage set it. An LLM explainer's
    # label carries its route: "token" (the token label kept, no call) or "llm"; NULL without triage.
    (
        "triage",
        """
CREATE TABLE triage (
    run_id VARCHAR, key VARCHAR, feature INTEGER, label VARCHAR, value DOUBLE, ci_low DOUBLE, ci_high DOUBLE,
    n INTEGER, p_value DOUBLE, route VARCHAR, created_at TIMESTAMP
);
ALTER TABLE explanations ADD COLUMN route VARCHAR;
""",
    ),
    # Each scorer's lift over its floor: the mean score less what the constant answer scores (the
    # scorer's chance: balanced accuracy, AUROC and win rate give a constant answer 0.5 exactly), with a
    # bootstrap 95% interval over features.
    (
        "score lift",
        """
ALTER TABLE score_summaries ADD COLUMN mean DOUBLE;
ALTER TABLE score_summaries ADD COLUMN lift DOUBLE;
ALTER TABLE score_summaries ADD COLUMN lift_low DOUBLE;
ALTER TABLE score_summaries ADD COLUMN lift_high DOUBLE;
""",
    ),
    # Prompt tokens the provider's prompt cache served or wrote, each priced as the provider prices
    # it (OpenAI's cached_tokens; Anthropic's cache_read / cache_creation_input_tokens). NULL on
    # calls logged before: not reported then.
    (
        "cache tokens",
        """
ALTER TABLE llm_calls ADD COLUMN cache_read_tokens BIGINT;
ALTER TABLE llm_calls ADD COLUMN cache_write_tokens BIGINT;
""",
    ),
]
SCHEMA_VERSION = len(MIGRATIONS)

# feature_summary's columns before the scorers' (see feature_summary_sql).
_SUMMARY_FEATURE = (
    "f.run_id, x.explainer, f.feature, x.label, x.status AS label_status, f.density, f.max_activation, f.n_firing, "
    "f.dead, f.dense"
)
_SUMMARY_COLUMNS = (
    "run_id",
    "explainer",
    "feature",
    "label",
    "label_status",
    "density",
    "max_activation",
    "n_firing",
    "dead",
    "dense",
)
_SCORE_SUFFIXES = {"value": "", "ci_low": "_low", "ci_high": "_high", "p_value": "_p"}  # scores column → view column


def feature_summary_sql(scorers: list[str]) -> str:
    """The feature_summary view: one row per feature and explainer with the label, the feature's
    statistics and, per scorer, the headline of its own-label score: <scorer>, <scorer>_low,
    <scorer>_high, <scorer>_p. A change to its shape ships with a new migration that calls
    rebuild_feature_summary, so that existing databases get it too."""
    taken = [c.lower() for c in _SUMMARY_COLUMNS] + [
        (scorer + suffix).lower() for scorer in scorers for suffix in _SCORE_SUFFIXES.values()
    ]  # DuckDB's identifiers ignore case
    clash = sorted({c for c in taken if taken.count(c) > 1})
    if clash:
        raise ValueError(f"the scorer names {scorers} give feature_summary the column(s) {clash} twice")
    columns = [_SUMMARY_FEATURE] + [
        f"max(s.{column}) FILTER (WHERE s.scorer = {_literal(scorer)}) AS {_identifier(scorer + suffix)}"
        for scorer in scorers
        for column, suffix in _SCORE_SUFFIXES.items()
    ]
    return (
        "CREATE OR REPLACE VIEW feature_summary AS\nSELECT "
        + ",\n    ".join(columns)
        + """
FROM features f
LEFT JOIN explanations x ON x.run_id = f.run_id AND x.feature = f.feature
LEFT JOIN scores s
    ON s.run_id = f.run_id AND s.feature = f.feature AND s.explainer = x.explainer AND s.label_source = 'true'
GROUP BY ALL;
"""
    )


def rebuild_feature_summary(con: duckdb.DuckDBPyConnection) -> None:
    """Recreate feature_summary with a column group per row of score_columns, in their order."""
    scorers = [r[0] for r in con.execute("SELECT scorer FROM score_columns ORDER BY position").fetchall()]
    con.execute(feature_summary_sql(scorers))


def add_score_columns(con: duckdb.DuckDBPyConnection, scorers: list[str]) -> list[str]:
    """Register the scorers score_columns lacks, after the others, and rebuild feature_summary when
    there were any; returns them. The caller holds the transaction."""
    known = {r[0] for r in con.execute("SELECT scorer FROM score_columns").fetchall()}
    new = [s for s in dict.fromkeys(scorers) if s not in known]
    if new:
        con.execute(
            "INSERT INTO score_columns SELECT unnest($names), "
            "(SELECT coalesce(max(position), 0) FROM score_columns) + generate_subscripts($names, 1)",
            {"names": new},
        )
        rebuild_feature_summary(con)
    return new


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def applied_migrations(con: duckdb.DuckDBPyConnection, path: Path | None = None) -> list[str]:
    """Names of the migrations this database has, in order. A database with tables but no record of
    autointerp's schema (another application's file) is refused before anything is written to it."""
    found = con.execute(
        "SELECT table_schema, table_name FROM information_schema.tables WHERE table_catalog = current_database() "
        "ORDER BY table_schema != 'main', table_name"
    ).fetchall()
    tables = {name for schema, name in found if schema == "main"}
    if "schema_migrations" in tables:
        columns = {
            r[0]
            for r in con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_catalog = current_database() "
                "AND table_schema = 'main' AND table_name = 'schema_migrations'"
            ).fetchall()
        }
        applied = (
            [r[0] for r in con.execute("SELECT name FROM schema_migrations ORDER BY version").fetchall()]
            if {"version", "name"} <= columns
            else None
        )
        if applied is None or (applied and applied[0] != MIGRATIONS[0][0]):
            raise _foreign(path, found)
        return applied
    if not found:
        return []  # a new file
    if not {"meta", "runs"} <= tables:  # the tables every autointerp database has had since the first
        raise _foreign(path, found)
    row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall()
    version = int(row[0][0]) if row else 1
    if version != 1:
        raise AutointerpError(
            f"database schema version {version} has no migration record",
            "open it with the autointerp version that wrote it",
        )
    return [MIGRATIONS[0][0]]  # written before migrations were recorded: the initial schema


def _foreign(path: Path | None, tables: list[tuple[str, str]]) -> AutointerpError:
    names = [name if schema == "main" else f"{schema}.{name}" for schema, name in tables]
    return AutointerpError(
        f"{path or 'the database'} was not written by autointerp: it holds {len(names)} table"
        f"{'s' if len(names) != 1 else ''} ({', '.join(names[:6])}{', …' if len(names) > 6 else ''}) and no record "
        "of autointerp's schema; it was left as it was",
        "point --project at a directory of autointerp's (or a new one), or move the file out of the project directory",
    )


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


def pending_migrations(path: Path) -> bool:
    """Whether the database at `path` lacks migrations this autointerp has (refusing one from a newer autointerp)."""
    if not path.exists():
        return False
    con = connect(path, read_only=True)
    try:
        applied = applied_migrations(con, path)
        _check_known(applied, path)
        return len(applied) < len(MIGRATIONS)
    finally:
        con.close()


def migrate(con: duckdb.DuckDBPyConnection, path: Path) -> list[str]:
    """Apply the migrations this database lacks, each in one transaction with its record; returns their names.
    A database from a newer autointerp is refused and left as it is."""
    applied = applied_migrations(con, path)
    _check_known(applied, path)
    done = []
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name VARCHAR, applied_at TIMESTAMP)"
    )
    recorded = {r[0] for r in con.execute("SELECT version FROM schema_migrations").fetchall()}
    for version, (name, change) in enumerate(MIGRATIONS, 1):
        if version <= len(applied) and version in recorded:
            continue
        con.execute("BEGIN TRANSACTION")
        try:
            if version > len(applied):
                if isinstance(change, str):
                    con.execute(change)
                else:
                    change(con)
                done.append(name)
            con.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", [version, name, utc_now()])
            con.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", [str(version)])
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    return done
