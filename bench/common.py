"""Shared setup for the benchmarks: the embedded model and an SAE (given, or trained quickly)."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch

from autointerp.config import EMBEDDED_MODEL, CorpusConfig, ModelConfig, TrainConfig
from autointerp.gather.corpus import iter_contexts, iter_documents
from autointerp.subject.model import SubjectModel
from autointerp.subject.sae import load_sae
from autointerp.subject.train import collect_activations, train_topk_sae

REPORTS = Path(__file__).resolve().parent.parent / "reports"


def embedded_model(device: str = "auto") -> SubjectModel:
    return SubjectModel(ModelConfig(name=EMBEDDED_MODEL, device=device))  # the encoder the benchmarks measured


def sae_for(model: SubjectModel, sae_path: str | None, n_features: int = 4096):
    """The SAE at sae_path, or a 4096-latent TopK SAE trained for one quick epoch (the gather cost
    depends on sparsity and width, not on how well the SAE is trained)."""
    if sae_path:
        return load_sae(sae_path, device=model.device)
    cfg = CorpusConfig(max_tokens=120_000)
    x, held = collect_activations(model, iter_contexts(iter_documents(cfg), model.tokenizer, cfg, 64), 100_000, 10_000)
    sae, _, _ = train_topk_sae(x, held, TrainConfig(n_features=n_features, epochs=1), progress=False)
    return sae


def cpu_model() -> str:
    """The CPU's model name (lscpu), and the architecture: every timing is given with it."""
    import subprocess

    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    name = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?")
    return f"{name}, {platform.machine()}"


def machine() -> dict:
    info = {
        "cpu": cpu_model(),
        "cpu_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write_report(name: str, payload: dict, markdown: str) -> None:
    REPORTS.mkdir(exist_ok=True)
    (REPORTS / f"{name}.json").write_text(json.dumps(payload, indent=2, default=str))
    (REPORTS / f"{name}.md").write_text(markdown)
    print(markdown)
