"""Prices of the LLM providers' models: USD per million prompt and completion tokens, and prompt
tokens the provider's prompt cache served or wrote, from the package's data/prices.toml, with a
user's table added (--prices). `Usage` is what a provider reports it billed for one call."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import NamedTuple

import tomllib

from autointerp.errors import AutointerpError

FORMAT = 'write lines like "gpt-4o-mini" = [0.15, 0.60, 0.075] under [models]'


@dataclass(frozen=True)
class Usage:
    """The tokens a provider billed for one call. prompt_tokens counts every input token, cached or
    not (OpenAI's prompt_tokens; Anthropic's input_tokens plus its two cache counts)."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cache_read_tokens: int = 0  # served from the provider's prompt cache (OpenAI cached_tokens)
    cache_write_tokens: int = 0  # written to it (Anthropic cache_creation_input_tokens)


class Price(NamedTuple):
    """USD per million tokens."""

    input: float
    output: float
    cache_read: float  # a prompt token the provider's cache served
    cache_write: float  # a prompt token written to the cache

    def cost(self, usage: Usage) -> float | None:
        """USD for one call; None when the provider did not report its usage."""
        if usage.prompt_tokens is None or usage.completion_tokens is None:
            return None
        fresh = usage.prompt_tokens - usage.cache_read_tokens - usage.cache_write_tokens
        return (
            fresh * self.input
            + usage.cache_read_tokens * self.cache_read
            + usage.cache_write_tokens * self.cache_write
            + usage.completion_tokens * self.output
        ) / 1e6


def read_prices(text: str, where: str) -> dict[str, Price]:
    """USD per million tokens by model, from a [models] table of model = [input, output, cache read,
    cache write]; the cache prices may be left out, and are then the input price (no discount)."""
    try:
        table = tomllib.loads(text).get("models")
    except tomllib.TOMLDecodeError as e:
        raise AutointerpError(f"price table {where} is not valid TOML: {e}", FORMAT) from None
    if not isinstance(table, dict):
        raise AutointerpError(f"price table {where} has no [models] table", FORMAT)
    out = {}
    for model, p in table.items():
        if not (
            isinstance(p, list)
            and 2 <= len(p) <= 4
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0 for x in p)
        ):
            raise AutointerpError(
                f"price table {where}: {model} = {p!r} is not [input, output(, cache read, cache write)] USD per "
                "million tokens",
                f'write "{model}" = [input, output] or [input, output, cache read, cache write], non-negative numbers',
            )
        out[model] = as_price(p)
    return out


def as_price(values) -> Price:
    """A Price from [input, output] or [input, output, cache read(, cache write)]: a cache price
    left out is the input price (no discount)."""
    values = [float(x) for x in values]
    return Price(*values, *[values[0]] * (4 - len(values)))


def load_prices(path: str | Path) -> dict[str, Price]:
    """The package's price table with the models of the TOML file at path added or replaced."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise AutointerpError(f"cannot read price table {path}: {e.strerror}", "check the path of --prices") from None
    return DEFAULT_PRICES | read_prices(text, str(path))


# USD per million (input, output) tokens: data/prices.toml, installed with the package.
DEFAULT_PRICES = read_prices(files("autointerp.data").joinpath("prices.toml").read_text(), "data/prices.toml")
SNAPSHOT_SUFFIX = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8}|latest)$")


def price_of(prices: dict[str, Price], model: str) -> Price | None:
    """A model's price; a dated snapshot (gpt-4o-mini-2024-07-18) takes its family's when not listed."""
    found = prices.get(model, prices.get(SNAPSHOT_SUFFIX.sub("", model)))
    return None if found is None else as_price(found)
