"""Rebuild saelens_releases.json from SAELens' pretrained-SAE directory (sae_lens/pretrained_saes.yaml,
MIT licence, public data): python data/saelens_releases.py path/to/pretrained_saes.yaml [sae_lens version]

Only the facts loading needs are kept: each release's hub repository, model, conversion and config
overrides, and per SAE its folder, norm_scaling_factor, L0 and Neuronpedia id."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

KEPT_SAE_FIELDS = ("path", "norm_scaling_factor", "l0", "neuronpedia", "repo_id", "model", "conversion_func")


def build(yaml_path: Path, version: str) -> dict:
    import yaml

    text = yaml_path.read_bytes()
    directory = yaml.safe_load(text)
    releases = {}
    for name, entry in sorted(directory.items()):
        releases[name] = {
            "repo_id": entry["repo_id"],
            "model": entry["model"],
            "conversion": entry.get("conversion_func"),
            "overrides": entry.get("config_overrides") or {},
            "saes": {
                sae["id"]: {k: sae[k] for k in KEPT_SAE_FIELDS if sae.get(k) is not None} for sae in entry["saes"]
            },
        }
    return {
        "source": {
            "sae_lens": version,
            "file": "sae_lens/pretrained_saes.yaml",
            "sha256": hashlib.sha256(text).hexdigest(),
            "licence": "MIT, Copyright (c) 2023 Joseph Bloom",
        },
        "releases": releases,
    }


if __name__ == "__main__":
    out = Path(__file__).with_name("saelens_releases.json")
    data = build(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "unknown")
    out.write_text(json.dumps(data, separators=(",", ":"), sort_keys=True) + "\n")
    print(f"{out}: {len(data['releases'])} releases, {sum(len(r['saes']) for r in data['releases'].values())} SAEs")
