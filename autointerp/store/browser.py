"""The read-only queries of `autointerp serve`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from autointerp.errors import AutointerpError
from autointerp.store.db import connect, db_path
from autointerp.store.migrations import SCHEMA_VERSION, applied_migrations


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
    # A feature fires on a token of a top window where its activation there is at least this share of the
    # window's peak: the token search finds features by what they read, not by any word near it.
    FIRES = 0.5
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
    # A sort by score: the scored features, ranked_last's after the others; then the unscored.
    _LAST = "s.value IS NULL, list_contains(CAST($last AS INTEGER[]), f.feature), "
    _TABLE_FILTERS = {  # name → fragment; each is added when its parameter is given
        "q": " AND contains(lower(x.label), lower($q))",
        # The ids anywhere in a window narrow the rows fast; the feature must then fire on one of them.
        "token": " AND f.feature IN (SELECT DISTINCT feature FROM examples WHERE run_id = $run AND kind = 'top' AND "
        "({match}) AND len(list_filter(range(1, len(token_ids) + 1), lambda i: list_contains($token_ids, token_ids[i]) "
        "AND activations[i] >= $fires * list_max(activations))) > 0)",
        "token_one": "list_contains(token_ids, $t{i})",
        "token_many": "list_has_any(token_ids, $token_ids)",
        "min": " AND s.value >= $min",
        "low": " AND s.ci_low >= $low",
        "dead=1": " AND f.dead",
        "dead=0": " AND NOT f.dead",
        "dense=1": " AND f.dense",
        "dense=0": " AND NOT f.dense",
    }

    def __init__(self, project: str | Path, run_id: str | None = None, ranks_last: Callable[[str], bool] | None = None):
        """ranks_last(label): labels that a sort by score puts after all others (the views decide which)."""
        self.path = db_path(project)
        if not self.path.exists():
            raise AutointerpError(
                f"no database at {self.path}", "run `autointerp gather` (or `autointerp run`) for this project first"
            )
        self.con = connect(self.path, read_only=True)
        try:
            applied = len(applied_migrations(self.con, self.path))
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
        self.ranks_last = ranks_last
        self._last: dict[tuple[str, str], list[int]] = {}

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
        dead, dense)). token_ids: features that fire on one of them in a top window (FIRES); min and low filter on
        the scorer's value and interval."""
        args: dict = {"run": run, "explainer": explainer, "scorer": scorer}
        filters = []
        if q:
            filters.append(self._TABLE_FILTERS["q"])
            args["q"] = q
        if token_ids is not None:
            args.update(token_ids=token_ids, fires=self.FIRES)
            if not token_ids:
                match = "false"
            elif len(token_ids) <= self.TOKEN_IDS_OR:
                match = " OR ".join(self._TABLE_FILTERS["token_one"].format(i=i) for i in range(len(token_ids)))
                args.update({f"t{i}": tid for i, tid in enumerate(token_ids)})
            else:
                match = self._TABLE_FILTERS["token_many"]
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
            + f"\nORDER BY {self._LAST if sort == 'score' else ''}{self.SORT_KEYS[sort]} "
            f"{'DESC' if descending else 'ASC'} NULLS LAST, f.feature\nLIMIT "
            "$limit OFFSET $offset",
            **args,
            **({"last": self.ranked_last(run, explainer)} if sort == "score" else {}),
            limit=limit,
            offset=offset,
        )
        return total, rows

    def ranked_last(self, run: str, explainer: str | None) -> list[int]:
        """The features whose label ranks_last puts after the others in a sort by score. Read once per run
        and explainer (all its labels, the one unpaged query): nothing changes the database while it is served."""
        if self.ranks_last is None or explainer is None:
            return []
        if (run, explainer) not in self._last:
            rows = self._query(
                "SELECT feature, label FROM explanations WHERE run_id = $run AND explainer = $explainer "
                "AND status = 'ok' AND label IS NOT NULL",
                run=run,
                explainer=explainer,
            )
            self._last[(run, explainer)] = sorted(f for f, label in rows if self.ranks_last(label))
        return self._last[(run, explainer)]

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
        """(split, kind, rank, quantile, max_activation, token_ids, activations, text, text_ends) of its top and
        quantile windows; text is NULL for windows gathered before the store kept it."""
        return self._query(
            """
SELECT split, kind, rank, quantile, max_activation, token_ids, activations, text, text_ends FROM examples
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
SELECT explainer, method, n_labels, n_mapped, n_categories, saturated, verdict->>'meaning' FROM saturation_summary
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
