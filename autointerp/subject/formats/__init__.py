"""The SAE file formats, registered in this one place, each with how its files are recognised as data.

Adding a format is one module here, formats/<name>.py, whose `load(path, dtype, overrides)` returns
the SAE in the working dtype on the CPU, plus one `SAEFormat` entry below. Each loader converts its
format into the canonical `SAE` (subject/autoencoder.py). Per-feature scalings found in some formats
(SAELens `finetuning_scaling_factor`, topk `rescale_acts_by_decoder_norm`) are folded into
W_enc/b_enc/W_dec, so encode stays one matmul plus the activation and the encoded activations equal
the source library's. So is a release's activation norm scaling factor (SAELens
`norm_scaling_factor`, by subject/sae.py): the SAE then reads raw activations. Fields whose meaning
depends on the subject model (SAELens `center_writing_weights`) are applied when the SAE is paired
with the model (gather.fit_sae); fields that describe another computation than "encode one
hookpoint, decode into it" are refused with the reason.

The loaders are imported when first used, so that this registry imports neither torch nor the
format modules, and the SAE module can check its `format` against it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from autointerp.subject.autoencoder import SAE


@dataclass(frozen=True)
class SAEFormat:
    """One SAE file format: its name (also its module's), how it is described, how it is recognised."""

    name: str
    description: str  # how the error messages list it
    # A directory is in this format when it holds every file of one of these sets.
    directory_files: tuple[tuple[str, ...], ...] = ()
    # A single file with this suffix is in this format, unless it is a marker file of a directory format.
    file_suffix: str | None = None

    @property
    def load(self) -> Callable[[Path, torch.dtype, Mapping[str, Any] | None], SAE]:
        """formats/<name>.py's load(path, dtype, overrides)."""
        return import_module(f"{__name__}.{self.name}").load


# Every format, in detection order: the first whose files a directory holds is its format.
SAE_FORMATS: dict[str, SAEFormat] = {
    f.name: f
    for f in (
        SAEFormat(
            "saelens",
            "SAELens (cfg.json + sae_weights.safetensors)",
            directory_files=(("cfg.json", "sae_weights.safetensors"),),
        ),
        SAEFormat(
            "sparsify", "sparsify (cfg.json + sae.safetensors)", directory_files=(("cfg.json", "sae.safetensors"),)
        ),
        SAEFormat(
            "dictionary_learning",
            "dictionary_learning (config.json + ae.pt)",
            directory_files=(("config.json", "ae.pt"),),
        ),
        SAEFormat(
            "gemma_scope",
            "Gemma Scope (params.npz, or config.json + params.safetensors)",
            directory_files=(("params.npz",), ("config.json", "params.safetensors")),
        ),
        SAEFormat("openai", "OpenAI (a .pt state dict with pre_bias and latent_bias)", file_suffix=".pt"),
    )
}
FORMATS = tuple(SAE_FORMATS)
SUPPORTED_TEXT = ", ".join(f.description for f in SAE_FORMATS.values())


def detect_directory(directory: Path) -> SAEFormat | None:
    """The format of the SAE in directory, or None when its files match none."""
    names = {p.name for p in directory.iterdir() if p.is_file()}
    return next(
        (f for f in SAE_FORMATS.values() if any(set(files) <= names for files in f.directory_files)),
        None,
    )


def detect_file(path: Path) -> SAEFormat | None:
    """The single-file format of the file at path; None when it has none, or when it is one of the
    files that mark a directory format and sits among the others (then its directory is the SAE)."""
    found = next((f for f in SAE_FORMATS.values() if f.file_suffix and path.suffix == f.file_suffix), None)
    if found is None:
        return None
    siblings = {p.name for p in path.parent.iterdir() if p.is_file()}
    marks_directory = any(
        path.name in files and set(files) <= siblings for f in SAE_FORMATS.values() for files in f.directory_files
    )
    return None if marks_directory else found
