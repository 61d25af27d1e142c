"""Write small SAE files in each supported on-disk format, from NumPy arrays, for the loader tests.

These writers only serialise; they never import autointerp, so the files they produce are an
independent statement of each format's layout.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file


def as_torch(arrays: dict[str, Any], dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """NumPy arrays to torch tensors of dtype; other values (ints, strings, dicts) pass through."""
    return {k: torch.from_numpy(np.asarray(v)).to(dtype) if isinstance(v, np.ndarray) else v for k, v in arrays.items()}


def write_json(path: Path, obj: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def write_safetensors(path: Path, arrays: dict[str, np.ndarray], dtype: torch.dtype = torch.float32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in as_torch(arrays, dtype).items()}, path)


def write_saelens(d: Path, cfg: dict[str, Any], params: dict[str, np.ndarray]) -> Path:
    write_json(d / "cfg.json", cfg)
    write_safetensors(d / "sae_weights.safetensors", params)
    return d


def write_sparsify(
    d: Path, cfg: dict[str, Any], params: dict[str, np.ndarray], dtype: torch.dtype = torch.float32
) -> Path:
    write_json(d / "cfg.json", cfg)
    write_safetensors(d / "sae.safetensors", params, dtype)
    return d


def write_dictionary_learning(d: Path, config: dict[str, Any], state_dict: dict[str, Any]) -> Path:
    write_json(d / "config.json", config)
    torch.save(as_torch(state_dict), d / "ae.pt")
    return d


def write_gemma_scope_npz(d: Path, params: dict[str, np.ndarray]) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    np.savez(d / "params.npz", **{k: v.astype(np.float32) for k, v in params.items()})
    return d


def write_gemma_scope_safetensors(d: Path, config: dict[str, Any], params: dict[str, np.ndarray]) -> Path:
    write_json(d / "config.json", config)
    write_safetensors(d / "params.safetensors", params)
    return d


def write_openai(path: Path, state_dict: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(as_torch(state_dict), path)
    return path


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def write_hf_cache(cache: Path, repo_id: str, files_from: Path, commit: str = "a" * 40) -> Path:
    """Put every file under files_from into an HF hub cache laid out as huggingface_hub writes it:
    blobs named by content hash, snapshot entries symlinked to them, refs/main naming the commit.
    Returns the snapshot folder."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    for src in sorted(p for p in files_from.rglob("*") if p.is_file()):
        data = src.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / src.relative_to(files_from)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("../" * (len(link.relative_to(repo).parts) - 1)) / "blobs" / blob.name)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot
