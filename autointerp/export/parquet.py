"""parquet: every table of the database as `parquet/<table>.parquet`, this run's rows (meta and
llm_calls whole, as they carry no run id), streamed batch by batch so memory stays flat."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from autointerp.config import ExportConfig
from autointerp.store import Store


def write_parquet(store: Store, run_id: str, cfg: ExportConfig, root: Path) -> list[Path]:
    out = root / "parquet"
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in store.table_names():
        reader = store.table_reader(name, run_id)
        path = out / f"{name}.parquet"
        with pq.ParquetWriter(path, reader.schema) as writer:
            for batch in reader:
                writer.write_batch(batch)
        paths.append(path)
    return paths
