"""Loading an SAE from wherever it lives (a local file or directory, hf://owner/repo[/folder], a
SAELens release name) in any registered format, and saving one as SAELens.

The SAE itself (its maths) is subject/autoencoder.py; each file format is a module of
subject/formats/, found through the registry there.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from autointerp.errors import AutointerpError
from autointerp.subject.autoencoder import SAE
from autointerp.subject.formats import SUPPORTED_TEXT, detect_directory, detect_file
from autointerp.subject.formats.saelens import save as save_saelens
from autointerp.subject.releases import ReleaseSAE, close_releases, is_release, resolve_release

__all__ = ["SAE", "load_sae", "save_saelens"]


def _sae_subdirectories(root: Path) -> list[str]:
    """Relative paths of the folders under root that hold an SAE in a recognised format."""
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        dirnames.sort()
        if Path(dirpath) != root and detect_directory(Path(dirpath)):
            found.append(Path(dirpath).relative_to(root).as_posix())
    return found


def _load_local(
    path: Path, hookpoint: str | None, dtype: torch.dtype, overrides: Mapping[str, Any] | None = None
) -> SAE:
    if not path.exists():
        close = close_releases(str(path))
        raise AutointerpError(
            f"SAE path {path} does not exist and is not a SAELens release name"
            + (f" (close: {', '.join(close)})" if close else ""),
            "check the path; hub folders are written hf://owner/repo[/folder], SAELens releases as the release name "
            "with --sae-id",
        )
    if path.is_file():
        single_file = detect_file(path)
        if single_file is not None:
            return single_file.load(path, dtype, overrides)
        path = path.parent  # a file of a directory format: load the directory it belongs to
    if hookpoint is not None:
        if not (path / hookpoint).is_dir():
            raise AutointerpError(
                f"hookpoint {hookpoint!r} is not a folder of {path}; SAEs there: {_sae_subdirectories(path)}",
                "pass one of the listed folders as hookpoint=",
            )
        path = path / hookpoint
    fmt = detect_directory(path)
    if fmt is None:
        candidates = _sae_subdirectories(path)
        if len(candidates) == 1:
            return _load_local(path / candidates[0], None, dtype, overrides)
        if candidates:
            raise AutointerpError(
                f"{path} holds {len(candidates)} SAEs: {', '.join(candidates)}",
                f"choose one with hookpoint='<folder>' (e.g. hookpoint={candidates[0]!r})",
            )
        files = sorted(p.name for p in path.iterdir())
        raise AutointerpError(
            f"no SAE format recognised in {path}; it contains: {files[:30] or 'nothing'}",
            f"point at a file or directory in a supported format: {SUPPORTED_TEXT}",
        )
    return fmt.load(path, dtype, overrides)


def _download(source: str, hookpoint: str | None) -> Path:
    """Fetch hf://owner/repo[/folder] into the HF cache (or find it there offline); return its path."""
    parts = source.removeprefix("hf://").strip("/").split("/")
    if len(parts) < 2 or not all(parts):
        raise AutointerpError(
            f"{source!r} is not a Hub address", "write it as hf://owner/repo or hf://owner/repo/sub/folder"
        )
    repo_id, folder = "/".join(parts[:2]), "/".join(parts[2:])
    wanted = "/".join(p for p in (folder, hookpoint) if p)
    from huggingface_hub import snapshot_download  # imported lazily: only Hub sources need it

    try:
        snapshot = Path(snapshot_download(repo_id, allow_patterns=[f"{wanted}/*"] if wanted else None))
    except Exception as e:  # network, auth, offline-cache misses: all reported the same way
        raise AutointerpError(
            f"cannot fetch {repo_id} from the Hugging Face Hub: {type(e).__name__}: {e}",
            "check the repo id and your network/token; offline (HF_HUB_OFFLINE=1) the files must already "
            "be in the HF cache (HF_HUB_CACHE); or pass a local directory",
        ) from e
    return snapshot / folder if folder else snapshot


def load_sae(
    source: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    sae_id: str | None = None,
    norm_scaling_factor: float | None = None,
) -> SAE:
    """Load an SAE from a local file/directory, hf://owner/repo[/folder], or a SAELens release name
    (then sae_id names one of its SAEs, as SAELens' sae_id), detecting the format.

    sae_id picks one SAE folder when the source holds several (e.g. a sparsify root, by hookpoint).
    norm_scaling_factor: for SAEs trained on scaled activations (normalize_activations
    expected_average_only_in); a release supplies its own. Weights are float32 unless dtype is
    given; the result is for inference (no gradients).
    """
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype.removeprefix("torch."), None)
        if not isinstance(resolved, torch.dtype):
            raise AutointerpError(f"unknown dtype {dtype!r}", "pass a torch dtype such as torch.float32 or 'bfloat16'")
        dtype = resolved
    work_dtype = dtype or torch.float32
    text = os.fspath(source)
    release = None
    if text.startswith("hf://"):
        path = _download(text, sae_id)
    elif not Path(text).expanduser().exists() and is_release(text):
        release = resolve_release(text, sae_id)
        path, sae_id = _download(release.hub_source, None), None
    else:
        path = Path(text).expanduser()
    sae = _load_local(path, sae_id, work_dtype, release.overrides if release else None)
    if release is not None:
        sae.hook_name = sae.hook_name or release.hookpoint
        sae.metadata["release"] = {
            "release": release.release,
            "sae_id": release.sae_id,
            "repo_id": release.repo_id,
            "folder": release.folder,
            "model": release.model,
            "neuronpedia": release.neuronpedia,
        }
        sae.metadata.setdefault("model_name", release.model)
    _apply_norm_scale(sae, norm_scaling_factor, release)
    sae.check_finite()  # NaN weights would gather NaN activations and report NaN metrics
    return sae.to(device)


def _apply_norm_scale(sae: SAE, given: float | None, release: ReleaseSAE | None) -> None:
    scaled = sae.metadata.get("normalize_activations") == "expected_average_only_in"
    if given is not None and not scaled:
        raise AutointerpError(
            f"a norm scaling factor was given, but {sae.metadata.get('source')} was not trained on scaled "
            "activations (normalize_activations is not expected_average_only_in)",
            "drop the norm scaling factor (--sae-norm-scale)",
        )
    if not scaled:
        return
    factor = given if given is not None else (release.norm_scaling_factor if release else None)
    if factor is None:
        raise AutointerpError(
            f"{sae.metadata.get('source')} was trained on activations scaled to a fixed average norm "
            "(normalize_activations expected_average_only_in), and the scaling factor is not in its files",
            "load it by its SAELens release name (--sae <release> --sae-id <id>), whose directory lists the factor, "
            "or pass it: --sae-norm-scale (Python: norm_scaling_factor=)",
        )
    sae.fold_input_scale(factor)
