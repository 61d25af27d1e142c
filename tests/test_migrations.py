"""Schema migrations: a database written by an earlier autointerp opens, upgrades in place and keeps
every row; one written by a newer autointerp is refused untouched."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from autointerp.errors import AutointerpError
from autointerp.store import DB_NAME, MIGRATIONS, SCHEMA_VERSION, Store

FIXTURE = Path(__file__).parent / "fixtures" / "db_schema_v1"
TABLES = (
    "runs",
    "features",
    "examples",
    "contexts",
    "documents",
    "vocab",
    "explanations",
    "scores",
    "llm_calls",
    "categories",
    "saturation_steps",
    "saturation_summary",
)


def load_fixture(tmp_path: Path, name: str) -> Path:
    """A project whose database is rebuilt from a fixture's CSV export (tests/fixtures/<name>)."""
    data = tmp_path / "export"
    shutil.copytree(FIXTURE.parent / name, data)
    load = (data / "load.sql").read_text().replace("{DIR}", str(data))
    project = tmp_path / "p"
    project.mkdir()
    con = duckdb.connect(str(project / DB_NAME))
    con.execute((data / "schema.sql").read_text())
    con.execute(load)
    con.close()
    return project


def v1_project(tmp_path: Path) -> Path:
    """The fixture database (main at 56c3d4b, schema version 1) rebuilt from its CSV export."""
    return load_fixture(tmp_path, FIXTURE.name)


def counts(path: Path) -> dict[str, int]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return {t: con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in TABLES}
    finally:
        con.close()


def test_a_schema_1_database_upgrades_in_place_and_keeps_every_row(tmp_path):
    project = v1_project(tmp_path)
    before = counts(project / DB_NAME)
    assert before["llm_calls"] == 48 and before["explanations"] == 32
    old = duckdb.connect(str(project / DB_NAME), read_only=True)
    old_order = old.execute(
        "SELECT explainer, feature FROM explanations ORDER BY explainer, created_at, feature"
    ).fetchall()
    old_calls = old.execute("SELECT cache_key FROM llm_calls ORDER BY created_at, rowid").fetchall()
    old.close()

    with Store(project) as store:
        applied = store.con.execute("SELECT version, name FROM schema_migrations ORDER BY version").fetchall()
        assert applied == [(i, name) for i, (name, _) in enumerate(MIGRATIONS, 1)]
        assert store.con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall() == [
            (str(SCHEMA_VERSION),)
        ]
        # Calls numbered in the order they were logged; labels keep their order, now as a column.
        calls = store.con.execute("SELECT call_id, cache_key, run_id FROM llm_calls ORDER BY call_id").fetchall()
        assert [c[0] for c in calls] == list(range(1, 49)) and [(c[1],) for c in calls] == old_calls
        assert all(c[2] is None for c in calls)  # no run id was recorded then; none is invented
        order = store.con.execute("SELECT explainer, feature FROM explanations ORDER BY explainer, position").fetchall()
        assert order == old_order
        labels = store.saturation_labels("r1", "offline:token-stats-v1")
        assert len(labels) == 16
    assert counts(project / DB_NAME) == before
    with Store(project) as store:  # opening again applies nothing more
        assert store.con.execute("SELECT count(*) FROM schema_migrations").fetchall() == [(SCHEMA_VERSION,)]


def test_an_upgraded_database_takes_new_labels_reports_and_exports(tmp_path):
    from autointerp.export import export
    from autointerp.views.report import write_report

    project = v1_project(tmp_path)
    html = write_report(project, "r1").html.read_text()  # a read-only command upgrades first
    assert "openai_compatible:standin" in html and "offline:token-stats-v1" in html
    relabelled = {3: "relabelled three", 0: "relabelled zero"}
    with Store(project) as store:
        assert store.con.execute("SELECT count(*) FROM schema_migrations").fetchall() == [(SCHEMA_VERSION,)]
        before = store.explanations("r1", "offline:token-stats-v1").set_index("feature")
        other = store.explanations("r1", "openai_compatible:standin")
        labels = list(relabelled.values())
        store.write_explanations(
            "r1",
            "offline:token-stats-v1",
            pd.DataFrame(
                {"feature": list(relabelled), "label": labels, "status": "ok", "error": None, "raw": labels}
                | {"prompt_hash": "new", "n_snippets": 7, "call_id": None}
            ),
        )
        after = store.explanations("r1", "offline:token-stats-v1").set_index("feature")
        assert after.label[list(relabelled)].to_dict() == relabelled
        unchanged = after.index.difference(list(relabelled))
        assert len(unchanged) == 14 and after.label[unchanged].equals(before.label[unchanged])
        assert after.position.equals(before.position)  # relabelled features keep their place in the labelling order
        pd.testing.assert_frame_equal(store.explanations("r1", "openai_compatible:standin"), other)
    assert "relabelled three" in write_report(project, "r1").html.read_text()
    (exported,) = export(project, "r1", formats=("neuronpedia",))["neuronpedia"]
    assert "relabelled three" in exported.read_text()


def test_a_database_from_a_newer_autointerp_is_refused_and_left_as_it_is(tmp_path):
    with Store(tmp_path) as store:
        store.con.execute("INSERT INTO schema_migrations VALUES (?, 'from the future', now())", [SCHEMA_VERSION + 1])
        store.con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(SCHEMA_VERSION + 1)])
    before = (tmp_path / DB_NAME).read_bytes()
    for read_only in (False, True):
        with pytest.raises(AutointerpError, match="newer autointerp") as info:
            Store(tmp_path, read_only=read_only)
        assert "'from the future'" in info.value.problem and "pip install -U autointerp" in info.value.fix
    assert (tmp_path / DB_NAME).read_bytes() == before


FOREIGN_SCHEMAS = {
    "a table": ["CREATE TABLE customers (id INTEGER)"],
    "a table in another schema": ["CREATE SCHEMA app", "CREATE TABLE app.orders (id INTEGER)"],
    "a view and a meta table": ["CREATE TABLE meta (k VARCHAR, v VARCHAR)", "CREATE VIEW v AS SELECT 1 AS one"],
    "another tool's schema_migrations": ["CREATE TABLE schema_migrations (version VARCHAR PRIMARY KEY)"],
    "other migrations under that name": [
        "CREATE TABLE schema_migrations (version INTEGER, name VARCHAR, applied_at TIMESTAMP)",
        "INSERT INTO schema_migrations VALUES (1, 'create_users', now())",
    ],
}


@pytest.mark.parametrize("case", list(FOREIGN_SCHEMAS))
def test_a_database_another_application_wrote_is_refused_and_left_byte_identical(tmp_path, case):
    path = tmp_path / DB_NAME
    con = duckdb.connect(str(path))
    for sql in FOREIGN_SCHEMAS[case]:
        con.execute(sql)
    con.close()
    before = path.read_bytes()
    for read_only in (True, False):
        with pytest.raises(AutointerpError, match="was not written by autointerp") as info:
            Store(tmp_path, read_only=read_only)
        assert str(path) in info.value.problem and "--project" in info.value.fix
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [DB_NAME]


def test_an_empty_duckdb_file_becomes_a_project_database_and_a_longer_file_is_not_called_truncated(tmp_path):
    duckdb.connect(str(tmp_path / DB_NAME)).close()  # a DuckDB file with no table: nothing to lose
    with Store(tmp_path) as store:
        assert store.runs().empty
    with open(tmp_path / DB_NAME, "ab") as f:  # bytes past the blocks its header records (free space)
        f.write(b"\0" * 262_144)
    with Store(tmp_path, read_only=True) as store:
        assert store.runs().empty
