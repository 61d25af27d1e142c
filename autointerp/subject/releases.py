"""SAELens release names, resolved the way SAELens users write them:
`SAE.from_pretrained(release="gemma-scope-2b-pt-res-canonical", sae_id="layer_12/width_16k/canonical")`
is `--sae gemma-scope-2b-pt-res-canonical --sae-id layer_12/width_16k/canonical` here.

The directory (data/saelens_releases.json, reduced from SAELens' public pretrained_saes.yaml) gives
each SAE's hub repository and folder, the model it reads (a TransformerLens name, mapped here to
its hub id), the release's config overrides and the SAE's activation norm scaling factor."""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.resources import files

from autointerp.errors import AutointerpError

# TransformerLens model names used by the directory → Hugging Face hub ids. Names with a "/" are hub ids already.
HUB_MODELS = {
    "gpt2-small": "openai-community/gpt2",
    "gemma-2b": "google/gemma-2b",
    "gemma-2b-it": "google/gemma-2b-it",
    "gemma-2-2b": "google/gemma-2-2b",
    "gemma-2-9b": "google/gemma-2-9b",
    "gemma-2-9b-it": "google/gemma-2-9b-it",
    "gemma-2-27b": "google/gemma-2-27b",
    "gemma-3-1b": "google/gemma-3-1b-pt",
    "mistral-7b": "mistralai/Mistral-7B-v0.1",
    "pythia-70m-deduped": "EleutherAI/pythia-70m-deduped",
    "qwen3-0.6b": "Qwen/Qwen3-0.6B",
    "qwen3-1.7b": "Qwen/Qwen3-1.7B",
    "qwen3-4b": "Qwen/Qwen3-4B",
    "qwen3-8b": "Qwen/Qwen3-8B",
    "qwen3-14b": "Qwen/Qwen3-14B",
}
# SAELens conversions whose files one of autointerp's loaders reads as they are on the hub.
READABLE_CONVERSIONS = {None: "SAELens", "gemma_2": "Gemma Scope", "dictionary_learning_1": "dictionary_learning"}
_TL_PREFIX = re.compile(
    r"^(blocks\.\d+\.(?:hook_resid_pre|hook_resid_mid|hook_resid_post|hook_attn_out|hook_mlp_out|attn\.hook_z))(?:$|__)"
)
_GEMMA_SCOPE_SITES = {"res": "hook_resid_post", "mlp": "hook_mlp_out", "att": "attn.hook_z"}


@dataclass(frozen=True)
class ReleaseSAE:
    release: str
    sae_id: str
    repo_id: str
    folder: str
    model: str  # hub id
    hookpoint: str | None  # TransformerLens name, when the directory implies it
    conversion: str | None
    norm_scaling_factor: float | None = None
    neuronpedia: str | None = None
    overrides: dict = field(default_factory=dict)

    @property
    def hub_source(self) -> str:
        return f"hf://{self.repo_id}/{self.folder}"


@lru_cache(maxsize=1)
def directory() -> dict:
    return json.loads(files("autointerp.data").joinpath("saelens_releases.json").read_text())


def hub_model(name: str) -> str:
    return name if "/" in name else HUB_MODELS.get(name, name)


def gemma_scope_hookpoint(path: str) -> str | None:
    """TransformerLens hook from a Gemma Scope repository path such as gemma-scope-2b-pt-res/layer_20/width_16k/..."""
    text = path + "/"
    layer = re.search(r"/layer_(\d+)/", text)
    site = re.search(r"gemma-scope[^/]*-(res|mlp|att)(?:-[^/]*)?/", text)
    if layer is None or site is None:
        return None
    return f"blocks.{layer.group(1)}.{_GEMMA_SCOPE_SITES[site.group(1)]}"


def is_release(name: str) -> bool:
    return name in directory()["releases"]


def close_releases(name: str) -> list[str]:
    return difflib.get_close_matches(name, list(directory()["releases"]), n=3, cutoff=0.6)


def resolve_release(release: str, sae_id: str | None) -> ReleaseSAE:
    """The hub location and facts of one SAE of a SAELens release; errors name the valid choices."""
    entry = directory()["releases"][release]
    saes = entry["saes"]
    if sae_id is None:
        if len(saes) != 1:
            ids = list(saes)
            raise AutointerpError(
                f"SAELens release '{release}' holds {len(ids)} SAEs; which one?",
                f"pass --sae-id (Python: hookpoint=), e.g. {', '.join(ids[:4])}" + (" ..." if len(ids) > 4 else ""),
            )
        sae_id = next(iter(saes))
    if sae_id not in saes:
        close = difflib.get_close_matches(sae_id, list(saes), n=4, cutoff=0.5)
        raise AutointerpError(
            f"SAELens release '{release}' has no SAE '{sae_id}'" + (f"; close: {', '.join(close)}" if close else ""),
            f"pass one of its {len(saes)} SAE ids (the SAELens pretrained-SAE table lists them), e.g. "
            f"{next(iter(saes))}",
        )
    sae = saes[sae_id]
    conversion = sae.get("conversion_func", entry["conversion"])
    if conversion not in READABLE_CONVERSIONS:
        raise AutointerpError(
            f"SAELens release '{release}' is stored in a layout SAELens converts with '{conversion}', which autointerp "
            "does not read",
            "convert it with SAELens once (SAE.from_pretrained(release, sae_id)[0].save_model('dir')) and pass --sae "
            "dir",
        )
    repo_id = sae.get("repo_id", entry["repo_id"])
    folder = sae["path"]
    if conversion == "gemma_2":
        hookpoint = gemma_scope_hookpoint(f"{repo_id}/{folder}")
    else:
        match = _TL_PREFIX.match(sae_id)
        hookpoint = match.group(1) if match else None
    return ReleaseSAE(
        release=release,
        sae_id=sae_id,
        repo_id=repo_id,
        folder=folder,
        model=hub_model(sae.get("model", entry["model"])),
        hookpoint=hookpoint,
        conversion=conversion,
        norm_scaling_factor=sae.get("norm_scaling_factor"),
        neuronpedia=sae.get("neuronpedia"),
        overrides=dict(entry["overrides"]),
    )
