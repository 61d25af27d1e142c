"""Exports of one stored run for other tools, read from the DuckDB file alone.

The formats are a registry, `WRITERS`: name → a `base.Writer`, each in its own module (the three
Neuronpedia formats share one, as they share their records). Adding a format is a new module with
a writer and one line here.
"""

from __future__ import annotations

from pathlib import Path

from autointerp.config import ExportConfig
from autointerp.errors import AutointerpError
from autointerp.export import neuronpedia, openai_explanations, parquet
from autointerp.export.base import Writer
from autointerp.export.neuronpedia import read_neuronpedia_bulk
from autointerp.store import Store
from autointerp.views.text import file_stem

# In the order they are written.
WRITERS: dict[str, Writer] = {
    "parquet": parquet.write_parquet,
    "neuronpedia": neuronpedia.write_features,
    "neuronpedia-upload": neuronpedia.write_upload_batches,
    "neuronpedia-bulk": neuronpedia.write_bulk,
    "openai": openai_explanations.write_openai,
}
FORMATS = tuple(WRITERS)


def export(
    project: str | Path,
    run_id: str | None = None,
    out: str | Path | None = None,
    formats: tuple[str, ...] = FORMATS,
    cfg: ExportConfig | None = None,
) -> dict[str, list[Path]]:
    """Write the chosen formats for one run (default: the latest) under out (default <project>/exports/<run_id>/)."""
    unknown = set(formats) - set(WRITERS)
    if unknown:
        raise AutointerpError(f"unknown export format(s) {sorted(unknown)}", f"choose from {', '.join(FORMATS)}")
    cfg = cfg or ExportConfig()
    with Store(project, read_only=True) as store:
        run_id = store.run(run_id)["run_id"]
        root = Path(out) if out is not None else Path(project) / "exports" / file_stem(run_id)
        if "neuronpedia-bulk" in formats:  # refuse a bad id before any format is written
            neuronpedia.bulk_dir(root, neuronpedia.neuronpedia_head(store.run(run_id), cfg), cfg)
        return {name: write(store, run_id, cfg, root) for name, write in WRITERS.items() if name in formats}


__all__ = ["FORMATS", "WRITERS", "ExportConfig", "Writer", "export", "read_neuronpedia_bulk"]
