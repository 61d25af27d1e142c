"""Shared fixtures: tiny models of each family built locally from a config, with a real tokenizer."""

from __future__ import annotations

import pytest
import torch
import transformers as tf

FAMILY_CONFIGS = {
    "gpt2": lambda v: tf.GPT2Config(
        n_layer=3, n_embd=32, n_head=4, vocab_size=v, n_positions=256, bos_token_id=0, eos_token_id=0
    ),
    "llama": lambda v: tf.LlamaConfig(
        num_hidden_layers=3,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=v,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    ),
    "gemma2": lambda v: tf.Gemma2Config(
        num_hidden_layers=3,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        vocab_size=v,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    ),
    "gpt_neox": lambda v: tf.GPTNeoXConfig(
        num_hidden_layers=3,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        vocab_size=v,
        use_parallel_residual=False,
        bos_token_id=0,
        eos_token_id=0,
    ),
    "bert": lambda v: tf.BertConfig(
        num_hidden_layers=3, hidden_size=32, intermediate_size=64, num_attention_heads=4, vocab_size=v
    ),
}


@pytest.fixture(scope="session")
def byte_bpe_tokenizer(tmp_path_factory):
    """A small byte-level BPE tokenizer (GPT-2 style: no special tokens added) trained on pydoc text."""
    from pydoc_data.topics import topics

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(list(topics.values())[:200], trainer)
    return tf.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, byte_bpe_tokenizer):
    """Factory: family name → directory holding a seeded tiny model and its tokenizer."""
    made: dict[str, str] = {}

    def make(family: str) -> str:
        if family not in made:
            torch.manual_seed(0)
            cfg = FAMILY_CONFIGS[family](len(byte_bpe_tokenizer))
            cls = tf.AutoModel if family == "bert" else tf.AutoModelForCausalLM
            model = cls.from_config(cfg)
            path = tmp_path_factory.mktemp(family)
            model.save_pretrained(path)
            byte_bpe_tokenizer.save_pretrained(path)
            made[family] = str(path)
        return made[family]

    return make


@pytest.fixture(scope="session")
def pipeline_setup(tmp_path_factory, tiny_model_dir):
    """(root, corpus path, tiny GPT-2 dir): a JSONL corpus of pydoc topics and a 16-latent SAE
    saved in SAELens format."""
    import json
    from pydoc_data.topics import topics

    from autointerp.subject.sae import SAE, save_saelens

    root = tmp_path_factory.mktemp("pipe")
    corpus = root / "docs.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": topics[k][:800]}) for k in sorted(topics)[:30]))
    torch.manual_seed(0)
    sae = SAE(
        torch.randn(32, 16) * 10, torch.full((16,), -1.0), torch.randn(16, 32), torch.zeros(32), architecture="standard"
    )
    save_saelens(sae, root / "sae", hook_name="blocks.1.hook_resid_post", model_name="tiny-gpt2")
    return root, str(corpus), tiny_model_dir("gpt2")


def pipeline_config(setup, project, **overrides):
    """A RunConfig gathering the pipeline_setup corpus with small banks into `project`."""
    from autointerp.config import CorpusConfig, GatherConfig, ModelConfig, RunConfig

    root, corpus, model = setup
    base = dict(
        project=str(project),
        run_id="r1",
        model=ModelConfig(name=model, hookpoint="blocks.1.hook_resid_post", device="cpu"),
        corpus=CorpusConfig(source=corpus, context_length=32),
        sae=str(root / "sae"),
        gather=GatherConfig(n_top=3, n_bins=2, per_bin=2, n_negative=3, window=8, batch_size=4),
        eval_tokens=500,
        progress=False,
    )
    base.update(overrides)
    return RunConfig(**base)
