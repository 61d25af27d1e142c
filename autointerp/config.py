"""Every stage's settings as typed dataclasses with defaults that work, importable without torch
or an LLM SDK (the CLI builds its flags from them in well under a second). The stages re-export
the ones they read: `autointerp.gather.collect.GatherConfig` is this module's."""

from __future__ import annotations

from dataclasses import dataclass

from autointerp.errors import AutointerpError

EMBEDDED_MODEL = "embedded:all-MiniLM-L6-v2"  # a sentence encoder: the default subject
EMBEDDED_HOOKPOINT = "encoder.layer.2"  # resid_post of block 2 of 6: the middle of the network
EMBEDDED_LM = "embedded:SmolLM2-135M-Instruct"  # a causal LM: loss recovered, steering, output effects
EMBEDDED_LM_HOOKPOINT = "blocks.15.hook_resid_post"  # block 15 of 30
EMBEDDED_HOOKPOINTS = {EMBEDDED_MODEL: EMBEDDED_HOOKPOINT, EMBEDDED_LM: EMBEDDED_LM_HOOKPOINT}
DEFAULT_CORPUS = "pydoc"
METHODS = ("embedding", "codebook")
# Cosine threshold for the embedding rule. On a sample of hand-written labels, paraphrases of one
# concept scored 0.59–0.87 (most >= 0.78) and distinct but related concepts up to 0.76 ("opening"
# vs "closing parenthesis"); on 1,024 offline labels of the demo run the median nearest-neighbour
# cosine is 0.77. 0.8 keeps related concepts apart at the price of some unmerged paraphrases. That
# error adds false singletons, which make the stage call saturation later, never earlier.
DEFAULT_THRESHOLD = 0.8
DTYPES = ("float32", "bfloat16", "float16", "float64")


def at_least(owner: str, **values: tuple[object, int]) -> None:
    """Refuse a setting below its minimum, naming its flag (the CLI's flags are these fields)."""
    for name, (value, minimum) in values.items():
        if value is not None and (not isinstance(value, int) or value < minimum):
            flag = "--" + name.replace("_", "-")
            raise AutointerpError(f"{flag} is {value!r} ({owner}.{name})", f"pass {flag} {minimum} or more")


@dataclass
class ModelConfig:
    name: str = EMBEDDED_MODEL  # hub id, local directory, or one of the embedded models
    hookpoint: str | None = None  # None: an embedded model's middle layer; required for any other model
    device: str = "auto"  # "auto" picks cuda when present
    dtype: str = "float32"
    revision: str | None = None

    def __post_init__(self) -> None:
        if self.hookpoint is None:
            if self.name not in EMBEDDED_HOOKPOINTS:
                raise AutointerpError(
                    f"no hookpoint given for model '{self.name}'",
                    "pass --hookpoint (list the model's with `autointerp hookpoints --model ...`)",
                )
            self.hookpoint = EMBEDDED_HOOKPOINTS[self.name]
        if self.dtype not in DTYPES:
            raise AutointerpError(
                f"unknown dtype {self.dtype!r} for the model", f"use one of {', '.join(DTYPES)} (--dtype)"
            )


@dataclass
class CorpusConfig:
    source: str = DEFAULT_CORPUS  # path, "pydoc", or "hf:<dataset>[:<config>]"
    text_field: str = "text"  # JSONL / Parquet / HF column holding the text
    split: str = "train"  # HF dataset split
    context_length: int = 128  # tokens per context, special tokens included
    max_tokens: int | None = 1_000_000  # stop after this many content tokens
    encoding: str = "utf-8"

    def __post_init__(self) -> None:
        import codecs

        at_least("CorpusConfig", context_length=(self.context_length, 2), max_tokens=(self.max_tokens, 1))
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise AutointerpError(
                f"unknown text encoding {self.encoding!r}",
                "pass a Python codec name such as utf-8, latin-1 or cp1252 (--encoding)",
            ) from None


@dataclass
class GatherConfig:
    n_top: int = 50  # max-activating windows per feature per split
    n_bins: int = 10  # activation-quantile bins
    per_bin: int = 5  # quantile samples per bin per split
    n_negative: int = 50  # verified non-activating windows per feature per split
    window: int = 32  # tokens per example window
    tokens_before_peak: int | None = None  # None: W/2 for bidirectional models, 3W/4 for causal ones
    explain_fraction: float = 0.5  # share of contexts in the explain split
    dense_threshold: float = 0.1  # firing density above which a feature is flagged ultra-dense
    batch_size: int | None = None  # contexts per batch; None sizes it to memory
    seed: int = 0
    memory_gib: float | None = (
        None  # budget for the example banks; more features than fit are gathered in passes (None: half the free memory)
    )

    def __post_init__(self) -> None:
        if self.memory_gib is not None and not self.memory_gib > 0:
            raise AutointerpError(
                f"--memory-gib is {self.memory_gib}", "pass a positive number of GiB, e.g. --memory-gib 8"
            )
        at_least(
            "GatherConfig",
            n_top=(self.n_top, 1),
            n_bins=(self.n_bins, 1),
            per_bin=(self.per_bin, 1),
            n_negative=(self.n_negative, 1),
            window=(self.window, 1),
            batch_size=(self.batch_size, 1),
        )
        if not 0 < self.explain_fraction < 1:
            raise AutointerpError(
                f"explain_fraction is {self.explain_fraction}",
                "pass a share between 0 and 1 (both splits need contexts)",
            )

    def bank_bytes(self, n_features: int) -> int:
        """Memory of the example banks (gather.ExampleBank), allocated at once: per slot five 8-byte
        and two 4-byte numbers, the window's token ids, and its activations (not for negatives)."""
        slots = self.n_top + self.n_bins * self.per_bin
        per_slot = 44 + 4 * self.window
        return 2 * n_features * (slots * (per_slot + 4 * self.window) + self.n_negative * per_slot)


@dataclass
class TrainConfig:
    n_features: int = 4096
    k: int = 32
    aux_k: int | None = None  # None: d_in // 2
    aux_coef: float = 1 / 32
    lr: float = 5e-4
    batch_tokens: int = 4096
    epochs: int = 3
    train_tokens: int = 400_000  # activations kept in memory for training
    holdout_tokens: int = 40_000  # held out for FVU, L0 and dead fraction
    dead_after_tokens: int = 200_000  # a latent silent this long counts as dead for AuxK
    seed: int = 0

    def __post_init__(self) -> None:
        at_least(
            "TrainConfig",
            n_features=(self.n_features, 1),
            k=(self.k, 1),
            epochs=(self.epochs, 1),
            train_tokens=(self.train_tokens, 1),
            batch_tokens=(self.batch_tokens, 1),
        )
        if self.k > self.n_features:
            raise AutointerpError(
                f"--k {self.k} is more than --n-features {self.n_features}", "pass --k at most --n-features"
            )


@dataclass
class SaturationConfig:
    method: str = "embedding"  # "embedding" (offline) or "codebook" (needs an LLM judge)
    threshold: float = DEFAULT_THRESHOLD  # cosine similarity, method "embedding"
    codebook_batch: int = 25  # labels per judge call, method "codebook"
    its_window: int = 100  # labels in the rolling ITS window
    guest_base: int = 100  # Guest: the first `base` labels are the base
    guest_run: int = 50  # Guest: run length R
    guest_threshold: float = 0.05  # Guest: saturated when a run adds <= this share of the base's categories
    target_coverage: float = 0.95  # verdict and stop rule
    min_labels: int = 100  # the stop rule never fires before this many labels
    next_m: int = 100  # report expected new categories in the next m labels (capped at n, where Good–Toulmin holds)
    n_boot: int = 200  # shuffled orders
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise AutointerpError(f"unknown saturation method {self.method!r}", f"use one of {', '.join(METHODS)}")
        if self.codebook_batch < 1:
            raise AutointerpError(f"codebook_batch is {self.codebook_batch}", "pass codebook_batch >= 1")
        # The estimators check their own arguments: run them on one label so that a bad setting
        # fails here, before any judge call is paid for.
        from autointerp.stats.saturation import bootstrap_orders, good_toulmin, saturation_step_table, stop_rule

        one = ["x"]
        guest = dict(base=self.guest_base, run=self.guest_run, threshold=self.guest_threshold)
        saturation_step_table(one, window=self.its_window, **guest)
        bootstrap_orders(one, self.n_boot, self.seed, window=self.its_window, **guest)
        stop_rule(one, self.target_coverage, self.min_labels)
        good_toulmin({"x": 1}, self.next_m)


def check_strength(what: str, value: float) -> None:
    """An amplification strength: a positive, finite multiple of the hookpoint's median norm."""
    import math

    if not (math.isfinite(value) and value > 0):
        raise AutointerpError(f"{what} is {value}", "pass a positive finite multiple of the residual norm, e.g. 0.5")


@dataclass
class OutputEffectsConfig:
    """Output-centric descriptions, computed for causal LMs right after the gather (effects.py)."""

    enabled: bool = True
    k: int = 10  # tokens kept per feature and kind
    token_change: bool = True  # also amplify each feature on the neutral prompts (one forward per prompt and feature)
    strength: float = 0.5  # added norm, as a multiple of the hookpoint's median norm on the neutral prompts
    n_prompts: int = 8  # neutral prompts (data/neutral_prompts.txt) for the token change
    chunk: int = 64  # features per batch

    def __post_init__(self) -> None:
        for name in ("k", "n_prompts", "chunk"):
            if getattr(self, name) < 1:
                raise AutointerpError(
                    f"OutputEffectsConfig.{name} is {getattr(self, name)}", f"set {name} to 1 or more"
                )
        check_strength("output-effects strength", self.strength)
