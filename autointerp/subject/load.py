"""The model and SAE of a stored run, loaded again for the work that intervenes on the model:
steering, output effects and the intervention scorer. Everything comes from the run record, so
a project can be steered or scored later, from another process, with nothing but its path."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import torch

from autointerp.config import ModelConfig
from autointerp.errors import AutointerpError
from autointerp.gather.collect import fit_sae
from autointerp.subject.model import SubjectModel
from autointerp.subject.releases import is_release
from autointerp.subject.sae import SAE, load_sae


@dataclass
class Subject:
    model: SubjectModel
    sae: SAE
    run_id: str
    max_activation: torch.Tensor  # [d_sae], from the gather: the unit of steering strength

    def feature_max(self, feature: int) -> float:
        if not 0 <= feature < self.sae.d_sae:
            raise AutointerpError(
                f"feature {feature} does not exist: the SAE has {self.sae.d_sae:,} features",
                f"pick a feature from 0 to {self.sae.d_sae - 1}",
            )
        return float(self.max_activation[feature])


def load_subject(store, run_id: str | None = None, device: str | None = None) -> Subject:
    """Reload run `run_id`'s model and SAE (the SAE trained by autointerp lives in the project)."""
    run = store.run(run_id)
    saved = run["config"].get("model", {})
    known = {f.name for f in fields(ModelConfig)}
    cfg = ModelConfig(
        **{k: v for k, v in saved.items() if k in known}
        | {"name": run["model"], "hookpoint": run["hookpoint"]}
        | ({"device": device} if device else {})
    )
    source = run["sae_source"]
    if not str(source).startswith("hf://") and not Path(source).expanduser().exists() and not is_release(str(source)):
        raise AutointerpError(
            f"run '{run['run_id']}' was gathered with the SAE at {source}, which is gone",
            "restore the SAE there, or gather the run again",
        )
    sae = load_sae(
        source,
        sae_id=run["config"].get("sae_id", run["config"].get("sae_hookpoint")),
        norm_scaling_factor=run["config"].get("sae_norm_scale"),
    )
    model = SubjectModel(cfg)
    sae = sae.to(model.device)
    fit_sae(model, sae)
    features = store.features(run["run_id"]).sort_values("feature")
    max_activation = torch.zeros(sae.d_sae)
    max_activation[torch.tensor(features.feature.to_numpy(dtype="int64"))] = torch.tensor(
        features.max_activation.fillna(0).to_numpy(dtype="float32")
    )
    return Subject(model, sae, run["run_id"], max_activation)
