"""Hookpoints read the right tensor, and nothing above the hookpoint is computed."""

import pytest
import torch

from autointerp.config import ModelConfig
from autointerp.errors import AutointerpError
from autointerp.subject.model import SubjectModel

FAMILIES = ["gpt2", "llama", "gemma2", "gpt_neox", "bert"]
LAYER_PATH = {
    "gpt2": "transformer.h",
    "llama": "model.layers",
    "gemma2": "model.layers",
    "gpt_neox": "gpt_neox.layers",
    "bert": "encoder.layer",
}


def _read(path, hookpoint, ids):
    model = SubjectModel(ModelConfig(name=path, hookpoint=hookpoint, device="cpu"))
    return model.activations(ids, torch.ones_like(ids))


def _hidden_states(path, ids):
    model = SubjectModel(ModelConfig(name=path, hookpoint="blocks.0.hook_resid_pre", device="cpu")).model
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True).hidden_states


@pytest.mark.parametrize("family", FAMILIES)
def test_resid_hooks_match_hidden_states(tiny_model_dir, family):
    path = tiny_model_dir(family)
    ids = torch.randint(1, 400, (2, 12))
    hs = _hidden_states(path, ids)
    # hidden_states[L] is block L's input; hidden_states[L+1] its output (not for the last block).
    torch.testing.assert_close(_read(path, "blocks.1.hook_resid_pre", ids), hs[1])
    torch.testing.assert_close(_read(path, "blocks.1.hook_resid_post", ids), hs[2])
    torch.testing.assert_close(_read(path, f"{LAYER_PATH[family]}.1", ids), hs[2])


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma2", "gpt_neox"])
def test_pre_ln_residual_identities(tiny_model_dir, family):
    """resid_mid = resid_pre + attn_out and resid_post = resid_mid + mlp_out in pre-LN blocks."""
    path = tiny_model_dir(family)
    ids = torch.randint(1, 400, (2, 10))
    pre, mid, post, attn, mlp = (
        _read(path, f"blocks.2.{h}", ids)
        for h in ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out")
    )
    torch.testing.assert_close(mid, pre + attn, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(post, mid + mlp, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_hook_z_width_is_heads_times_head_dim(tiny_model_dir, family):
    model = SubjectModel(ModelConfig(name=tiny_model_dir(family), hookpoint="blocks.0.attn.hook_z", device="cpu"))
    assert model.width == 32  # 4 heads × 8 dims in every tiny config


@pytest.mark.parametrize("family", FAMILIES)
def test_no_layer_above_the_hookpoint_runs(tiny_model_dir, family):
    model = SubjectModel(ModelConfig(name=tiny_model_dir(family), hookpoint="blocks.0.hook_resid_post", device="cpu"))
    calls = []
    for i in (1, 2):
        model.model.get_submodule(f"{LAYER_PATH[family]}.{i}").register_forward_pre_hook(
            lambda *a, i=i: calls.append(i)
        )
    ids = torch.randint(1, 400, (1, 8))
    model.activations(ids, torch.ones_like(ids))
    assert calls == []


def test_unknown_hookpoint_lists_close_candidates(tiny_model_dir):
    with pytest.raises(AutointerpError) as e:
        SubjectModel(ModelConfig(name=tiny_model_dir("gpt2"), hookpoint="transformer.h.1.mpl", device="cpu"))
    assert "transformer.h.1.mlp" in str(e.value) and "fix:" in str(e.value)


def test_block_index_out_of_range(tiny_model_dir):
    with pytest.raises(AutointerpError, match="has 3 blocks"):
        SubjectModel(ModelConfig(name=tiny_model_dir("llama"), hookpoint="blocks.7.hook_resid_post", device="cpu"))


def test_module_path_without_base_prefix(tiny_model_dir):
    """sparsify names hookpoints relative to the base model (`layers.1`)."""
    path = tiny_model_dir("llama")
    ids = torch.randint(1, 400, (1, 6))
    torch.testing.assert_close(_read(path, "layers.1", ids), _read(path, "model.layers.1", ids))


def test_missing_model_names_the_fix(tmp_path):
    with pytest.raises(AutointerpError, match="no model at .*nope"):
        SubjectModel(ModelConfig(name=str(tmp_path / "nope"), hookpoint="transformer.h.0", device="cpu"))


def test_embedded_model_is_real_minilm():
    from autointerp.config import EMBEDDED_MODEL

    model = SubjectModel(ModelConfig(name=EMBEDDED_MODEL))
    assert model.width == 384 and model.model.config.num_hidden_layers == 6
    assert model.tokenizer.convert_ids_to_tokens(model.tokenizer("hello world")["input_ids"]) == [
        "[CLS]",
        "hello",
        "world",
        "[SEP]",
    ]


def test_a_hookpoint_is_required_except_for_the_embedded_models():
    from autointerp.config import EMBEDDED_LM, EMBEDDED_MODEL

    with pytest.raises(AutointerpError, match="no hookpoint given") as err:
        ModelConfig(name="gpt2")
    assert "--hookpoint" in err.value.fix
    assert ModelConfig(name=EMBEDDED_MODEL).hookpoint == "encoder.layer.2"
    assert ModelConfig().name == EMBEDDED_LM  # the default subject is the causal LM
    assert ModelConfig().hookpoint == "blocks.15.hook_resid_post"
