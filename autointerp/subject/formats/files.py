"""Reading the files SAE formats are stored in (JSON, safetensors, torch state dicts, npz), and
looking keys up in them, each failure an AutointerpError that names the file."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import Tensor

from autointerp.errors import AutointerpError
from autointerp.subject.autoencoder import not_float_error, shape_error


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise unreadable(path, e) from e
    if not isinstance(data, dict):
        raise unreadable(path, "expected a JSON object at the top level")
    return data


def read_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(path)
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt headers
        raise unreadable(path, e) from e


def read_pt(path: Path) -> dict[str, Any]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling a damaged file can fail in many ways
        raise unreadable(path, e) from e
    if not isinstance(data, Mapping):
        raise unreadable(path, f"expected a state dict, found {type(data).__name__}")
    return dict(data)


def read_npz(path: Path) -> dict[str, Tensor]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: torch.from_numpy(np.array(npz[key])) for key in npz.files}
    except Exception as e:  # zipfile and numpy raise assorted errors on damaged archives
        raise unreadable(path, e) from e


def unreadable(path: Path, error: object) -> AutointerpError:
    return AutointerpError(
        f"cannot read {path}: {error}",
        "the file is truncated or corrupt; re-download or re-export it",
    )


def require(mapping: Mapping[str, Any], key: str, file: Path, label: str | None = None) -> Any:
    """mapping[key], or an error naming the key and the file it should be in (or, for a tensor that
    float_tensors left out, its dtype)."""
    if key not in mapping:
        dtype = getattr(mapping, "not_float", {}).get(key)
        if dtype is not None:
            raise not_float_error(repr(label or key), dtype, f" in {file}")
        raise missing_key(file, label or key)
    return mapping[key]


def missing_key(file: Path, key: str) -> AutointerpError:
    return AutointerpError(
        f"{file} has no {key!r}",
        f"add {key!r} to {file.name}, or re-export the SAE with the tool that trained it",
    )


class FloatTensors(dict):
    """A state dict's floating-point tensors; the dtypes of its other tensors are kept in not_float,
    so that `require` names the dtype of a weight stored as integers instead of calling it missing."""

    def __init__(self, tensors: dict[str, Tensor], not_float: dict[str, torch.dtype]):
        super().__init__(tensors)
        self.not_float = not_float


def float_tensors(raw: Mapping[str, Any], dtype: torch.dtype) -> FloatTensors:
    """The floating-point tensors of a state dict, converted to the working dtype."""
    return FloatTensors(
        {k: v.to(dtype) for k, v in raw.items() if isinstance(v, Tensor) and v.is_floating_point()},
        {k: v.dtype for k, v in raw.items() if isinstance(v, Tensor) and not v.is_floating_point()},
    )


def source_dtype(raw: Mapping[str, Any]) -> str | None:
    """The dtype the state dict's floating-point tensors were stored in, as a name ("bfloat16")."""
    for v in raw.values():
        if isinstance(v, Tensor) and v.is_floating_point():
            return str(v.dtype).removeprefix("torch.")
    return None


def check_config_dims(cfg: Mapping[str, Any], file: Path, d_in: int, d_sae: int | None) -> None:
    """Refuse a config whose d_in / d_sae / num_latents disagree with the weights' shapes."""
    for key, actual in (("d_in", d_in), ("d_sae", d_sae), ("num_latents", d_sae)):
        claimed = cfg.get(key)
        # sparsify writes num_latents=0 to mean "d_in * expansion_factor".
        if actual is not None and claimed and int(claimed) != actual:
            raise shape_error(f"{file} says {key}={claimed} but the weights have {key}={actual}")
