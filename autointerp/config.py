"""Every setting of every stage, as typed dataclasses: each field's default and its help text are
written here and nowhere else. The CLI builds its flags from these fields (cli.py), and the Python
API takes the same dataclasses (`autointerp.pipeline.run(RunConfig(...))`). Importable without
torch or an LLM SDK, so that `autointerp --help` answers at once.

A field made with `setting(default, help)` is a flag of the commands that take its dataclass:
`--name-with-dashes`, or the `flag` it names. Fields made with plain defaults are for the Python
API only (internals such as chunk sizes).
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import MISSING, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from autointerp.errors import AutointerpError

if TYPE_CHECKING:
    from autointerp.llm.prices import Price

EMBEDDED_MODEL = "embedded:all-MiniLM-L6-v2"  # a sentence encoder (`make demo-encoder`)
EMBEDDED_HOOKPOINT = "encoder.layer.2"  # resid_post of block 2 of 6: the middle of the network
EMBEDDED_LM = "embedded:SmolLM2-135M-Instruct"  # the default subject, a causal LM: loss recovered, steering
EMBEDDED_LM_HOOKPOINT = "blocks.15.hook_resid_post"  # block 15 of 30
EMBEDDED_HOOKPOINTS = {EMBEDDED_MODEL: EMBEDDED_HOOKPOINT, EMBEDDED_LM: EMBEDDED_LM_HOOKPOINT}
METHODS = ("embedding", "codebook")
CONTROL_MODES = ("sample", "all", "none")
SAMPLE_SCORERS = ("auto", "judge", "offline")
OUTPUT_EFFECTS = ("full", "projection", "none")
DTYPES = ("float32", "bfloat16", "float16", "float64")
OFFLINE = "offline"  # the judge that needs no LLM: --judge offline


POSITIVE = "positive"  # the lower bound of a float setting unless it names another


def setting(
    default: Any = MISSING,
    help: str = "",
    *,
    flag: str | None = None,
    choices=None,
    parse=None,
    factory=MISSING,
    metavar: str | None = None,
    minimum: float | str | None = POSITIVE,
    maximum: float | None = None,
) -> Any:
    """A dataclass field that is also a command-line flag: its one default and one help text.
    flag: the flag's name when it is not the field's (without dashes); parse: turns the flag's text
    into the value (default: the field's type); choices: the values allowed. A number must be finite
    and lie in [minimum, maximum]: by default a whole number is at least 1 and a float above 0;
    minimum=None allows any finite number (check_numbers)."""
    meta = {
        "help": help,
        "flag": flag,
        "choices": choices,
        "parse": parse,
        "metavar": metavar,
        "minimum": minimum,
        "maximum": maximum,
    }
    if factory is not MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def check_numbers(cfg: Any) -> None:
    """Every numeric setting of a config (from a flag, a config file or Python): a number of the
    field's kind, finite, within its bounds. NaN, infinities, floats for whole numbers and out-of-range
    values are refused, naming the flag, before any work."""
    for f in fields(cfg):
        kind = str(f.type).split("|")[0].strip()
        value = getattr(cfg, f.name)
        if "help" not in f.metadata or kind not in ("int", "float") or value is None:
            continue
        flag = "--" + (f.metadata.get("flag") or f.name).replace("_", "-")
        where = f"{flag} is {value!r} ({type(cfg).__name__}.{f.name})"
        whole = kind == "int"
        if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)):
            raise AutointerpError(where, f"pass {flag} as {'a whole number' if whole else 'a number'}")
        if not math.isfinite(value):
            raise AutointerpError(where, f"pass a finite number as {flag}")
        low, high = f.metadata.get("minimum"), f.metadata.get("maximum")
        if low == POSITIVE:
            low = 1 if whole else None
            if not whole and not value > 0:
                raise AutointerpError(where, f"pass a positive {flag}")
        if low is not None and value < low:
            raise AutointerpError(where, f"pass {flag} {low} or more")
        if high is not None and value > high:
            raise AutointerpError(where, f"pass {flag} {high} or less")


def default_of(cls: type, name: str) -> Any:
    """A field's default, read without building the dataclass (building validates)."""
    f = next(f for f in fields(cls) if f.name == name)
    return f.default_factory() if f.default is MISSING else f.default


def at_least(owner: str, **values: tuple[object, int]) -> None:
    """Refuse a setting below its minimum, naming its flag (the CLI's flags are these fields)."""
    for name, (value, minimum) in values.items():
        if value is not None and (not isinstance(value, int) or value < minimum):
            flag = "--" + name.replace("_", "-")
            raise AutointerpError(f"{flag} is {value!r} ({owner}.{name})", f"pass {flag} {minimum} or more")


def check_strength(what: str, value: float) -> None:
    """An amplification strength: a positive, finite multiple of the hookpoint's median norm."""
    if not (math.isfinite(value) and value > 0):
        raise AutointerpError(f"{what} is {value}", "pass a positive finite multiple of the residual norm, e.g. 0.5")


_HOST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?\.?")


def _is_host(name: str) -> bool:
    """A DNS name or an IP address (IPv6 with or without brackets)."""
    try:
        ipaddress.ip_address(name.removeprefix("[").removesuffix("]"))
    except ValueError:
        return bool(_HOST_NAME.fullmatch(name))
    return True


def comma_list(text: str) -> tuple[str, ...]:
    """'a, b,c' → ('a', 'b', 'c')."""
    return tuple(x.strip() for x in text.split(",") if x.strip())


def feature_spec(text: str) -> list[int]:
    """'0-99,512' → [0, …, 99, 512]. A ValueError names the fix; the CLI shows it as a usage error."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"{text!r} is not a list of feature indices and ranges; write e.g. 0-99,512")
        first, last = int(lo), int(hi) if sep else int(lo)
        if last < first:
            raise ValueError(f"range {part!r} runs backwards; write the smaller index first")
        out.extend(range(first, last + 1))
    return list(dict.fromkeys(out))


# What an explainer may see beside the marked examples (ExplainConfig.views).
EXPLAIN_VIEWS = ("activations", "contrast", "outputs")


def view_list(text: str) -> tuple[str, ...]:
    """'activations,outputs' → ('activations', 'outputs'); 'none' → ()."""
    names = comma_list(text)
    if names == ("none",):
        return ()
    unknown = [n for n in names if n not in EXPLAIN_VIEWS]
    if unknown:
        raise ValueError(f"unknown view(s) {', '.join(unknown)}; choose from {', '.join(EXPLAIN_VIEWS)}, or none")
    return names


def bar_or_off(text: str) -> float | None:
    """'0.9' → 0.9; 'off' → None."""
    return None if text.strip().casefold() == "off" else float(text)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"{value} is not a positive number")
    return value


# ---------------------------------------------------------------------------------------------- gather


@dataclass
class ModelConfig:
    name: str = setting(
        EMBEDDED_LM,
        "hub id, local directory, or embedded:all-MiniLM-L6-v2, the embedded sentence encoder; unset: the model "
        "the SAE's config names, and without --sae the embedded causal LM SmolLM2-135M-Instruct",
        flag="model",
    )
    hookpoint: str | None = setting(
        None,
        "module path or TransformerLens name; unset: the SAE's own, and without --sae an embedded model's middle "
        "layer (blocks.15.hook_resid_post, encoder.layer.2)",
    )
    device: str = setting("auto", "cpu, cuda, cuda:1 ...; auto picks cuda when present")
    dtype: str = setting("float32", "model dtype: float32, bfloat16, float16, float64; unset: the SAE's, else float32")
    revision: str | None = None

    def __post_init__(self) -> None:
        check_numbers(self)
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
    source: str = setting(
        "pydoc", "file/dir of .txt/.jsonl/.parquet, 'pydoc', or hf:<dataset>[:<config>]", flag="corpus"
    )
    text_field: str = setting("text", "JSONL/Parquet/HF field with the text")
    split: str = "train"  # HF dataset split
    context_length: int = setting(128, "tokens per context, special tokens included", minimum=2)
    max_tokens: int | None = setting(250_000, "stop after this many corpus tokens")
    encoding: str = setting("utf-8", "text file encoding")

    def __post_init__(self) -> None:
        check_numbers(self)
        import codecs

        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise AutointerpError(
                f"unknown text encoding {self.encoding!r}",
                "pass a Python codec name such as utf-8, latin-1 or cp1252 (--encoding)",
            ) from None


DEFAULT_CORPUS = default_of(CorpusConfig, "source")


@dataclass
class GatherConfig:
    n_top: int = setting(50, "max-activating windows per feature per split")
    n_bins: int = setting(10, "activation-quantile bins")
    per_bin: int = setting(5, "quantile samples per bin per split")
    n_negative: int = setting(50, "verified non-activating windows per feature per split")
    window: int = setting(32, "tokens per example window")
    tokens_before_peak: int | None = None  # None: W/2 for bidirectional models, 3W/4 for causal ones
    explain_fraction: float = 0.5  # share of contexts in the explain split
    dense_threshold: float = 0.1  # firing density above which a feature is flagged ultra-dense
    batch_size: int | None = setting(None, "contexts per batch; unset: sized to memory")
    seed: int = setting(0, "seed of the example sampling and of SAE training", minimum=0, maximum=2**32 - 1)
    memory_gib: float | None = setting(
        None,
        "memory for the example banks; a dictionary whose banks do not fit is gathered in passes over the corpus, "
        "one per shard of features; unset: half the free memory",
    )

    def __post_init__(self) -> None:
        check_numbers(self)
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
    n_features: int = setting(2048, "latents of the SAE trained when --sae is omitted")
    k: int = setting(32, "active latents per token")
    aux_k: int | None = None  # None: d_in // 2
    aux_coef: float = 1 / 32
    lr: float = 5e-4
    batch_tokens: int = 4096
    epochs: int = setting(10, "passes over the training tokens")
    train_tokens: int = setting(150_000, "activations kept in memory for training")
    holdout_tokens: int = 40_000  # held out for FVU, L0 and dead fraction
    dead_after_tokens: int = 200_000  # a latent silent this long counts as dead for AuxK
    seed: int = setting(0, "seed of the example sampling and of SAE training", minimum=0, maximum=2**32 - 1)

    def __post_init__(self) -> None:
        check_numbers(self)
        at_least("TrainConfig", batch_tokens=(self.batch_tokens, 1))  # the settings are checked above
        if self.k > self.n_features:
            raise AutointerpError(
                f"--k {self.k} is more than --n-features {self.n_features}", "pass --k at most --n-features"
            )


@dataclass
class OutputEffectsConfig:
    """Output-centric descriptions, computed for causal LMs right after the gather (subject/effects.py)."""

    mode: str = setting(
        "full",
        "per feature: tokens its direction promotes and suppresses (projection) and, with full, the tokens "
        "amplifying it makes likelier on neutral prompts",
        flag="output_effects",
        choices=OUTPUT_EFFECTS,
    )
    k: int = 10  # tokens kept per feature and kind
    strength: float = setting(
        0.5, "amplification norm, as a multiple of the hookpoint's median norm", flag="effects_strength"
    )
    n_prompts: int = setting(
        4, "neutral prompts (data/neutral_prompts.txt) the amplification runs on", flag="effects_prompts"
    )
    chunk: int = 64  # features per batch

    def __post_init__(self) -> None:
        check_numbers(self)
        if self.mode not in OUTPUT_EFFECTS:
            raise AutointerpError(f"unknown output effects {self.mode!r}", f"use one of {', '.join(OUTPUT_EFFECTS)}")
        for name in ("k", "chunk"):  # the settings are checked above
            if getattr(self, name) < 1:
                raise AutointerpError(
                    f"OutputEffectsConfig.{name} is {getattr(self, name)}", f"set {name} to 1 or more"
                )

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    @property
    def token_change(self) -> bool:
        """Also amplify each feature on the neutral prompts (one forward per prompt and feature)."""
        return self.mode == "full"


# ----------------------------------------------------------------------------------------------- judge


def _provider_help() -> str:
    from autointerp.llm.providers import PROVIDERS

    return "; ".join(f"{name}: {spec.help}" for name, spec in PROVIDERS.items())


def _provider_choices() -> tuple[str, ...]:
    from autointerp.llm.providers import PROVIDERS

    return (OFFLINE, *PROVIDERS)


@dataclass
class LLMConfig:
    provider: str = setting(
        OFFLINE, "who labels and scores: offline needs no LLM", flag="judge", choices=_provider_choices
    )
    model: str = setting(
        "", "e.g. gpt-4o-mini, claude-haiku-4-5, llama3.1 (required for LLM judges but local)", flag="judge_model"
    )
    base_url: str | None = setting(
        None,
        "server root for openai_compatible (vLLM, Ollama, llama.cpp, OpenRouter), e.g. http://localhost:8000/v1; as "
        "the SDK expects it: '.../v1' for OpenAI, the host root for Anthropic",
    )
    api_key_env: str | None = setting(None, "environment variable holding the key; unset: the provider's")
    # None → 0 for OpenAI-style providers, omitted for Anthropic, whose API (version
    # 2026-10-21, sent by anthropic SDK 2.x) rejects sampling parameters with a 400.
    temperature: float | None = None
    max_tokens: int = 1024  # upper bound; each task asks for no more than its answer needs
    structured_output: str | None = setting(
        None,
        "constrain answers to each task's JSON schema: json_schema (OpenAI, vLLM, llama-server), json_object "
        "(llama-cpp-python), off; unset: the provider's default",
        choices=("off", "json_schema", "json_object"),
    )
    timeout_s: float | None = setting(
        None, "seconds per request; unset: the provider's (60; 600 for local)", flag="timeout"
    )
    max_retries: int = setting(5, "retries of a failed request", minimum=0)
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    concurrency: int | None = setting(None, "requests in flight; unset: the provider's (8; 1 for local)")
    requests_per_minute: float | None = setting(None, "requests-per-minute limit", flag="rpm")
    tokens_per_minute: float | None = setting(None, "tokens-per-minute limit", flag="tpm")
    # This many failed calls in a row, with no success between, stop the stage (a dead server, a
    # revoked key): failing every remaining feature slowly helps nobody.
    max_consecutive_failures: int = 10
    prices_file: str | None = setting(
        None,
        'TOML price table, lines like "gpt-4o-mini" = [0.15, 0.60, 0.075] (USD per million prompt, completion, '
        "cached prompt tokens; a fourth number prices tokens written to the cache) under [models], added to the "
        "shipped data/prices.toml",
        flag="prices",
    )
    # USD per million tokens by model, [input, output, cache read, cache write]; unset: data/prices.toml (+ prices_file)
    prices: dict[str, tuple[float, ...]] = field(default_factory=dict)
    local_threads: int | None = setting(None, "CPU threads of the local judge's server; unset: one per core")
    local_context: int = 4096  # a local server's context window in tokens
    # The provider's batch API (llm/batch.py): half the price, answers within the provider's 24 hours.
    batch: bool = setting(
        False,
        "send explain and score requests through the provider's batch API (OpenAI Batch API, Anthropic Message "
        "Batches): half the price, answers within 24 hours; a killed run collects its batches when re-run",
    )
    batch_poll_s: float = setting(30.0, "seconds between looks at a running batch", flag="batch_poll")
    batch_chunk: int = setting(
        8192,
        "with --batch, features per batch round: each stage reads, submits and stores this many at a time",
        parse=positive_int,
    )
    batch_idle_s: float = 1.0  # a queue no request has joined for this long goes out as a batch
    batch_max_requests: int = 50_000  # per batch (the providers allow 50,000 and 100,000)

    def __post_init__(self) -> None:
        check_numbers(self)
        from autointerp.llm.prices import DEFAULT_PRICES, load_prices
        from autointerp.llm.providers import PROVIDERS, STRUCTURED_OUTPUT, check_base_url

        if self.provider not in PROVIDERS:
            raise AutointerpError(f"unknown LLM provider {self.provider!r}", f"use one of {', '.join(PROVIDERS)}")
        spec = PROVIDERS[self.provider]
        if spec.served_model is not None:  # the provider serves one model of its own
            self.model = self.model or spec.served_model
            if self.model != spec.served_model:
                raise AutointerpError(
                    f"provider {self.provider!r} serves only {spec.served_model}, not {self.model!r}",
                    "leave --judge-model unset, or serve your model yourself and use --judge openai_compatible "
                    "--base-url ...",
                )
        elif not self.model:
            raise AutointerpError(
                f"provider {self.provider!r} needs a model name",
                "pass --judge-model, e.g. gpt-4o-mini or claude-haiku-4-5",
            )
        if spec.base_url == "managed" and self.base_url is not None:
            raise AutointerpError(
                f"provider {self.provider!r} starts its own server",
                "leave --base-url unset, or use --judge openai_compatible for a server of yours",
            )
        if spec.base_url == "required" and not self.base_url:
            raise AutointerpError(
                f"provider {self.provider!r} needs a base_url",
                "set --base-url to the server's OpenAI-style root, e.g. http://localhost:8000/v1",
            )
        if self.base_url is not None:
            check_base_url(self.base_url)
        if not spec.takes_temperature and self.temperature is not None:
            raise AutointerpError(
                f"the {self.provider} API rejects the temperature parameter",
                f"leave temperature unset for provider {self.provider!r}",
            )
        if spec.takes_temperature and self.temperature is None:
            self.temperature = 0.0
        if self.api_key_env is None:
            self.api_key_env = spec.key_env
        self.structured_output = self.structured_output or spec.structured_output
        if self.structured_output not in STRUCTURED_OUTPUT:
            raise AutointerpError(
                f"unknown structured output mode {self.structured_output!r}",
                f"use one of {', '.join(STRUCTURED_OUTPUT)}",
            )
        if self.structured_output not in spec.answer_formats:
            raise AutointerpError(
                f"provider {self.provider!r} takes no {self.structured_output} answer format",
                f"use one of {', '.join(spec.answer_formats)} (--structured-output)",
            )
        if self.batch and not spec.batch_api:
            raise AutointerpError(f"provider {self.provider!r} has no batch API", "leave --batch off for it")
        self.concurrency = spec.concurrency if self.concurrency is None else self.concurrency
        self.timeout_s = spec.timeout_s if self.timeout_s is None else self.timeout_s
        if not self.prices:
            table = DEFAULT_PRICES if self.prices_file is None else load_prices(self.prices_file)
            self.prices = {model: tuple(price) for model, price in table.items()}  # plain data, as it is stored
        # The settings are checked above (check_numbers); these are the Python API's own.
        for name in ("max_tokens", "max_consecutive_failures", "local_context", "batch_idle_s", "batch_max_requests"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise AutointerpError(f"LLMConfig.{name} must be positive, got {value}", f"set {name} above 0")

    @property
    def name(self) -> str:
        """provider:model, how results name their judge."""
        return f"{self.provider}:{self.model}"

    def request_params(self, max_tokens: int | None = None, schema: dict | None = None) -> dict[str, object]:
        """The parameters of one request besides its messages; all of them go into the cache key.
        max_tokens: the task's own bound (capped by the configured one); schema: the answer's JSON schema,
        sent as response_format when structured output is on."""
        params: dict[str, object] = {
            "max_tokens": min(max_tokens or self.max_tokens, self.max_tokens),
            "temperature": self.temperature,
        }
        if schema is not None and self.structured_output == "json_schema":
            params["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": dict(schema)},
            }
        elif schema is not None and self.structured_output == "json_object":
            params["response_format"] = {"type": "json_object", "schema": dict(schema)}
        return params

    @property
    def params(self) -> dict[str, object]:
        """The parameters of a request with no task bound and no schema."""
        return self.request_params()

    def price(self) -> Price | None:
        from autointerp.llm.prices import price_of

        return price_of(self.prices, self.model)


# ------------------------------------------------------------------------------------ explain, score

# Cosine threshold for the embedding rule. On a sample of hand-written labels, paraphrases of one
# concept scored 0.59–0.87 (most >= 0.78) and distinct but related concepts up to 0.76 ("opening"
# vs "closing parenthesis"); on 1,024 offline labels of the demo run the median nearest-neighbour
# cosine is 0.77. 0.8 keeps related concepts apart at the price of some unmerged paraphrases. That
# error adds false singletons, which make the stage call saturation later, never earlier.
DEFAULT_THRESHOLD = 0.8
MIN_LABELS = 100  # the stop rule never fires before this many labels (explain's stop and saturate's verdict)


@dataclass
class ExplainConfig:
    n_top: int | None = None  # max-activating explain snippets shown (None: the judge's default, its provider's)
    n_quantile: int | None = None  # plus quantile samples, spread over the bins
    context: int | None = None  # tokens kept each side of a snippet's marked tokens (None: the judge's; 0: all)
    views: tuple[str, ...] | None = setting(
        None,
        "what the explainer sees beside the marked examples, comma-separated: activations (each marked token's "
        "activation, 0-10), contrast (explain-split windows where the feature stays silent though they hold its "
        "most frequent tokens), outputs (causal LMs: the tokens its direction promotes and suppresses, and those "
        "it makes likelier when amplified); none: the examples alone; unset: the judge's default (all of them; "
        "the local judge: contrast)",
        parse=view_list,
    )
    n_contrast: int = 3  # silent windows shown with the contrast view
    n_outputs: int = 8  # tokens of each kind shown with the outputs view
    n_negative: int = 10  # negatives (used by judges that contrast, e.g. the offline one)
    features: list[int] | None = setting(
        None, "only these features: indices and ranges, e.g. 0-99,512", parse=feature_spec
    )
    max_features: int | None = setting(None, "label only the first N chosen features", parse=positive_int)
    sample: int | None = setting(None, "a seeded random sample of N of the chosen features")
    seed: int = setting(0, "seed of that sample", flag="sample_seed", minimum=0, maximum=2**32 - 1)
    redo: bool = setting(
        False, "label again features this judge labelled before (default: keep them and label the rest)"
    )
    triage: float | None = setting(
        0.9,
        "an LLM judge labels only features whose free token label scores below this detection (balanced accuracy, "
        "on explain-split windows no score reads); the others keep the token label at no call ('off': the LLM "
        "labels all)",
        parse=bar_or_off,
        maximum=1,
    )
    chunk: int = 512  # features per store write (and per stop-rule check)
    # Stop labelling once saturation coverage reaches this target (None: label every feature).
    stop_coverage: float | None = setting(
        None, "stop labelling once category coverage reaches this (e.g. 0.95)", maximum=1
    )
    stop_min_labels: int = MIN_LABELS
    stop_threshold: float = DEFAULT_THRESHOLD  # label-embedding similarity that merges two labels into one category

    def __post_init__(self) -> None:
        check_numbers(self)
        unknown = [v for v in self.views or () if v not in EXPLAIN_VIEWS]
        if unknown:
            raise AutointerpError(
                f"unknown explainer view(s) {unknown}", f"choose from {', '.join(EXPLAIN_VIEWS)} (--views), or none"
            )

    def for_judge(self, provider: str | None) -> ExplainConfig:
        """This config with the judge's defaults filled in where none was given: a provider's own
        (the registry's explain_snippets), else the full set an API model reads."""
        from dataclasses import replace

        from autointerp.llm.providers import ALL_VIEWS, FULL_SNIPPETS, PROVIDERS

        spec = PROVIDERS.get(provider) if provider else None
        top, quantile, context = spec.explain_snippets if spec else FULL_SNIPPETS
        return replace(
            self,
            n_top=top if self.n_top is None else self.n_top,
            n_quantile=quantile if self.n_quantile is None else self.n_quantile,
            context=(context or 0) if self.context is None else self.context,
            views=(spec.explain_views if spec else ALL_VIEWS) if self.views is None else self.views,
        )


@dataclass
class ScoreConfig:
    scorers: tuple[str, ...] | None = setting(
        None,
        "comma-separated subset of detection,fuzzing,simulation,embedding,coherence and intruder (label-free), "
        "intervention; "
        "unset: every scorer that reads only inputs, all but intervention, which runs the subject model, a causal "
        "LM, per feature",
        parse=comma_list,
    )
    n_top: int = 5  # held-out highest windows per feature
    n_strata: int = 5  # plus one window per activation stratum of the quantile bins
    # Held-out verified negatives per feature. 15, not 10: with 10 activating windows a label right on 90%
    # of windows is confident in 97% of features, not 92% (reports/score_power.md), for the tokens packing
    # saved (one prompt of 25 snippets costs what two of 10 did).
    n_negative: int = 15
    # Snippets per detection / fuzzing prompt; None: all of a feature's in one prompt (the shared
    # instructions paid once; the local judge answers no worse: reports/packed_prompts.md).
    per_prompt: int | None = None
    n_simulation: int = 4  # activating snippets simulated (plus as many negatives)
    n_embedding: int = 6  # activating snippets (plus as many negatives) per embedding AUROC
    n_intruder: int = 8  # intruder groups (4 activating windows + 1 negative each), all in one prompt
    n_intervention: int = setting(
        16, "neutral prompts the intervention scorer amplifies on", flag="intervention_prompts"
    )
    intervention_strength: float = 0.5  # added norm, as a multiple of the hookpoint's median norm on those prompts
    n_random_directions: int = 255  # the intervention scorer's null: p = 1/256 at best, below alpha = 0.01
    alpha: float = setting(0.01, "a label is confident when its permutation test gives p below this")
    shuffle_control: str = setting(
        "sample",
        "score a sample of features (until the gap is known to ±0.03), every feature, or none against another "
        "feature's label",
        choices=CONTROL_MODES,
    )
    control_half_width: float = 0.03
    control_start: int = 64  # features in the first control batch
    n_boot: int = 500
    n_permutations: int = 500
    seed: int = 0
    chunk: int = 512
    features: list[int] | None = setting(
        None, "only these features: indices and ranges, e.g. 0-99,512", parse=feature_spec
    )
    sample: int | None = setting(None, "a seeded random sample of N of the chosen features")
    sample_seed: int = setting(0, "seed of that sample", minimum=0, maximum=2**32 - 1)

    def __post_init__(self) -> None:
        check_numbers(self)
        # The names are checked against the scorer registry by the stage (scorers.chosen), which
        # the CLI calls before any work: config stays below the stages.
        self.scorers = None if self.scorers is None else tuple(self.scorers)
        if self.shuffle_control not in CONTROL_MODES:
            raise AutointerpError(
                f"unknown shuffle control {self.shuffle_control!r}", f"use one of {', '.join(CONTROL_MODES)}"
            )
        if not 0 < self.alpha < 1:
            raise AutointerpError(f"alpha is {self.alpha}", "pass a significance level between 0 and 1, e.g. 0.01")
        check_strength("intervention strength", self.intervention_strength)
        for name in (
            "n_top",
            "n_strata",
            "n_negative",
            "n_simulation",
            "n_embedding",
            "n_intruder",
            "n_random_directions",
            "control_start",
            "n_boot",
            "n_permutations",
            "chunk",
        ):
            if getattr(self, name) < 1:
                raise AutointerpError(f"ScoreConfig.{name} is {getattr(self, name)}", f"set {name} to 1 or more")
        if self.per_prompt is not None and self.per_prompt < 1:
            raise AutointerpError(
                f"ScoreConfig.per_prompt is {self.per_prompt}", "set per_prompt to 1 or more, or None"
            )

    @property
    def snippets_per_prompt(self) -> int:
        """Snippets in one detection / fuzzing prompt."""
        shown = self.n_top + self.n_strata + self.n_negative
        return shown if self.per_prompt is None else self.per_prompt


@dataclass
class SaturationConfig:
    method: str = setting("embedding", "embedding clustering (offline) or LLM codebook reduction", choices=METHODS)
    threshold: float = setting(
        DEFAULT_THRESHOLD, "label similarity that merges into one category (method embedding)", maximum=1
    )
    codebook_batch: int = 25  # labels per judge call, method "codebook"
    its_window: int = setting(100, "labels in the rolling ITS window")
    guest_base: int = setting(100, "Guest: the first this many labels are the base")
    guest_run: int = setting(50, "Guest: run length")
    guest_threshold: float = setting(
        0.05, "Guest: saturated when a run adds at most this share of the base's categories", minimum=0
    )
    target_coverage: float = setting(0.95, "the coverage the verdict and the stop rule ask for", maximum=1)
    min_labels: int = MIN_LABELS
    next_m: int = 100  # report expected new categories in the next m labels (capped at n, where Good–Toulmin holds)
    n_boot: int = setting(200, "shuffled orders", maximum=100_000)
    seed: int = setting(0, "seed of the shuffled orders", minimum=0, maximum=2**32 - 1)

    def __post_init__(self) -> None:
        check_numbers(self)
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
        bootstrap_orders(one, 1, self.seed, window=self.its_window, **guest)  # n_boot: its bounds say enough
        stop_rule(one, self.target_coverage, self.min_labels)
        good_toulmin({"x": 1}, self.next_m)


# --------------------------------------------------------------------------------------------- views


def _watch_list() -> dict[str, tuple[str, ...]]:
    from importlib.resources import files

    import tomllib

    table = tomllib.loads(files("autointerp.data").joinpath("watch.toml").read_text())
    return {concept: tuple(terms) for concept, terms in table.items()}


@dataclass
class ReportConfig:
    explainer: str | None = setting(None, "whose labels the cards show; unset: the one that labelled the most features")
    out: str | None = setting(None, "an .html file or a directory; unset: <project>/reports/")
    n_snippets: int = 3  # top snippets per feature card (the HTML size grows with this)
    quantile_bins: tuple[int, ...] = (0, 5)  # plus one quantile sample from each bin (0: the weakest activations)
    n_negatives: int = 1  # plus this many verified non-activating windows
    # Feature cards the HTML holds: one card is about 2.6 KB, and past a few thousand the page is
    # slow to open and search (16k cards took 9.9 s, 65k 92 s and 4.7 GB of browser memory); the
    # rest are browsed with `autointerp serve`. Figures and flags always count every feature.
    max_cards: int = 4096
    n_categories: int = 100  # largest categories listed; the long tail of singletons is only counted
    confidence_scorer: str = "detection"  # whose per-feature null test decides a low-confidence flag
    watch: dict[str, tuple[str, ...]] = field(default_factory=_watch_list)  # data/watch.toml

    def __post_init__(self) -> None:
        check_numbers(self)


@dataclass
class ExportConfig:
    formats: tuple[str, ...] = setting(
        ("parquet", "neuronpedia", "openai"),
        "comma-separated subset of parquet,neuronpedia,neuronpedia-upload,neuronpedia-bulk,openai",
        flag="format",
        parse=comma_list,
    )
    out: str | None = setting(None, "directory; unset: <project>/exports/<run id>/")
    n_activations: int = 20  # max-activating windows per feature in the Neuronpedia export
    chunk: int = 1024  # features read from the store at a time
    explainer: str | None = setting(
        None, "whose labels the Neuronpedia formats carry; unset: the one that labelled the most features"
    )
    model_id: str | None = setting(
        None, "Neuronpedia model id for neuronpedia-upload and -bulk; unset: from the run's model", flag="np_model_id"
    )
    source: str | None = setting(
        None,
        "Neuronpedia source for neuronpedia-upload and -bulk, e.g. 6-res-jb; unset: <layer>-autointerp",
        flag="np_source",
    )
    bulk_batch: int = setting(1024, "features per batch file of neuronpedia-bulk", flag="np_batch")

    def __post_init__(self) -> None:
        check_numbers(self)
        self.formats = tuple(self.formats)


@dataclass
class SteerConfig:
    feature: int = setting(0, "the feature to steer with", minimum=0)
    prompt: str = setting("I think that", "text to continue")
    # Beyond a thousand max activations the residual stream is nothing but the direction (and
    # float16 overflows): the continuation says nothing about the feature.
    scale: float | None = setting(
        None, "add the decoder direction × this many max activations", minimum=-1000, maximum=1000
    )
    clamp: float | None = setting(None, "or hold the feature at this many max activations", minimum=-1000, maximum=1000)
    max_new_tokens: int = setting(40, "tokens generated")
    temperature: float = setting(0.0, "0 for greedy", minimum=0)
    seed: int = setting(0, "sampling seed, the same for both continuations", minimum=0, maximum=2**32 - 1)
    device: str | None = setting(None, "cpu, cuda ...; unset: as gathered")

    def __post_init__(self) -> None:
        check_numbers(self)
        if (self.scale is None) == (self.clamp is None):
            raise AutointerpError(
                "steering needs exactly one of scale and clamp",
                "pass --scale S (add S × max activation) or --clamp S (hold the feature at S × max activation)",
            )
        if not self.prompt.strip():
            raise AutointerpError("the steering prompt is empty", "pass a prompt, e.g. --prompt 'I think that'")


@dataclass
class SteeringExampleConfig:
    """The run's steering example on a causal LM (stages/steering.py)."""

    candidates: int = setting(
        8,
        "causal LMs: steer with up to this many labelled features, naming a topic, to find one whose steered "
        "continuation shows it (0: no steering example)",
        flag="steer_candidates",
        minimum=0,
    )
    prompt: str = setting("I think that", "the steering example's prompt", flag="steer_prompt")
    strength: float = setting(
        0.5,
        "the steering example's added norm, as a multiple of the hookpoint's median norm (near 1 the text "
        "degenerates into repeats)",
        flag="steer_strength",
    )
    escalate: float = setting(
        1.5,
        "if no candidate's steered continuation shows its label at --steer-strength, all are tried once more at "
        "this multiple of it (1: no second try)",
        flag="steer_escalate",
        minimum=1,
    )
    max_new_tokens: int = setting(32, "tokens the steering example generates", flag="steer_tokens")
    seed: int = 0

    def __post_init__(self) -> None:
        check_numbers(self)
        if not self.prompt.strip():
            raise AutointerpError("the steering prompt is empty", "pass a prompt, e.g. --steer-prompt 'I think that'")


# ------------------------------------------------------------------------------------------ the run


@dataclass
class RunConfig:
    project: str = setting("project", "directory holding the DuckDB file and trained SAEs")
    run_id: str | None = setting(
        None, "name of the run; unset: for a new gather, derived from model, hookpoint and SAE, else the latest run"
    )
    model: ModelConfig = field(default_factory=ModelConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    sae: str | None = setting(
        None,
        "SAE directory/file, hf://owner/repo[/folder], or a SAELens release name such as "
        "gemma-scope-2b-pt-res-canonical; unset: train a TopK SAE on the spot",
    )
    sae_id: str | None = setting(
        None,
        "the SAE of a release (SAELens sae_id, e.g. layer_12/width_16k/canonical), or of a folder holding several "
        "(sparsify: its hookpoint)",
    )
    sae_norm_scale: float | None = setting(
        None,
        "for SAEs trained on activations scaled to a fixed norm whose files lack the factor (releases list their own)",
    )
    train: TrainConfig = field(default_factory=TrainConfig)
    gather: GatherConfig = field(default_factory=GatherConfig)
    effects: OutputEffectsConfig = field(default_factory=OutputEffectsConfig)  # causal LMs only
    eval_tokens: int = 40_000  # held-out tokens for FVU / L0 / dead fraction of a given SAE
    judge: LLMConfig | None = None  # None: the offline judge
    explainer: str | None = setting(
        None, "whose labels to score or saturate, e.g. local:qwen2.5-coder-1.5b-instruct-q4_k_m; unset: the judge's own"
    )
    keys_file: str | None = setting(None, 'TOML file with lines like openai = "sk-..." (environment variables win)')
    prompt_dir: str | None = setting(None, "directory with your own prompt files; unset: the shipped prompts")
    explain: ExplainConfig = field(default_factory=ExplainConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    saturation: SaturationConfig = field(default_factory=SaturationConfig)
    # A second explainer for a seeded random sample of the features, labelled, scored and saturated
    # beside the main judge's labels, and compared with them (the embedded default: the local LLM).
    sample_judge: LLMConfig | None = None
    sample_size: int = setting(
        8, "features in the sample the second judge labels; with --llm-minutes, the least it labels"
    )
    llm_minutes: float = setting(
        5.0,
        "minutes of the sample judge's time: the run times it on the first --sample-size features and labels as "
        "many more as fit (0: exactly --sample-size)",
        minimum=0,
    )
    sample_score: ScoreConfig = field(
        default_factory=lambda: ScoreConfig(scorers=("detection", "embedding"), n_top=3, n_strata=2, n_negative=5)
    )
    sample_scorer: str = setting(
        "auto",
        "who scores the sample's labels: judge (the sample judge, with the sample's scorers and sizes), offline (the "
        "offline judge reads the words each label names, at the main run's sizes, as it scores the token labels; "
        "free), auto (offline where the sample judge's answers do not follow a label, as the embedded 1.5B model's "
        "do not, else judge)",
        choices=SAMPLE_SCORERS,
    )
    steering: SteeringExampleConfig = field(default_factory=SteeringExampleConfig)  # causal LMs only
    intervention_sample: int = setting(
        128, "causal LMs: score this many of the labels by intervention, a seeded sample (0: none)", minimum=0
    )
    regather: bool = setting(
        False, "gather again even when this run was gathered with the same settings (its labels and scores are dropped)"
    )
    random_baseline: bool = setting(
        False,
        "also run gather, explain and score (same judge, no sample) on an SAE of the same shape and k with random "
        "directions, stored as run RUN-random: the floor each score is read against (one more gather; with an API "
        "judge, its calls are paid for too)",
    )
    progress: bool = True

    def __post_init__(self) -> None:
        check_numbers(self)
        if self.sample_scorer not in SAMPLE_SCORERS:
            raise AutointerpError(
                f"unknown sample scorer {self.sample_scorer!r}", f"use one of {', '.join(SAMPLE_SCORERS)}"
            )

    def resolved_run_id(self) -> str:
        import re
        from pathlib import Path

        from autointerp.subject.releases import is_release

        if self.run_id:
            return self.run_id
        model = {EMBEDDED_MODEL: "minilm", EMBEDDED_LM: "smollm2"}.get(self.model.name) or Path(self.model.name).name
        sae = "trained" if self.sae is None else Path(self.sae.rstrip("/")).name
        if self.sae is not None and self.sae_id and is_release(self.sae):  # one release holds many SAEs of a layer
            sae += f"-{self.sae_id}"
        return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{model}-{self.model.hookpoint}-{sae}")


@dataclass
class ShowConfig:
    feature: int = setting(0, "the feature index", minimum=0)
    explainer: str | None = setting(None, "only this explainer's label; unset: every explainer's")
    n: int = setting(5, "top windows to print")

    def __post_init__(self) -> None:
        check_numbers(self)


@dataclass
class LogsConfig:
    purpose: str | None = setting(None, "only calls for this task: explain, detection, fuzzing, simulation, codebook")
    feature: int | None = setting(None, "only calls about this feature", minimum=0)
    n: int = setting(10, "how many")
    full: bool = setting(False, "also print the prompts and parameters, and whole answers")

    def __post_init__(self) -> None:
        check_numbers(self)


@dataclass
class ServeConfig:
    host: str = setting("127.0.0.1", "address to listen on; 127.0.0.1 is this machine only")
    port: int = setting(8765, "port to listen on, 0 for any free one", minimum=0, maximum=65535)
    allow_hosts: tuple[str, ...] = setting(
        (),
        "more names the server answers to (comma-separated), such as a reverse proxy's or this machine's DNS name; "
        "requests under any other Host are refused, so a foreign web page cannot reach the server by DNS rebinding",
        flag="allow-host",
        parse=comma_list,
        metavar="NAMES",
    )
    quiet: bool = setting(False, "no line per request")

    def __post_init__(self) -> None:
        check_numbers(self)
        self.allow_hosts = tuple(self.allow_hosts)
        for name in self.allow_hosts:
            if not _is_host(name):
                raise AutointerpError(
                    f"--allow-host {name!r} is not a host name",
                    "give names or addresses only, without scheme, port, path or wildcard: --allow-host "
                    "atlas.example.org,10.0.0.5",
                )
