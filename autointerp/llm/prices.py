"""Prices of the LLM providers' models: USD per million prompt and completion tokens, from the
package's data/prices.toml, with a user's table added (--prices)."""

from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path

import tomllib

from autointerp.errors import AutointerpError


def read_prices(text: str, where: str) -> dict[str, tuple[float, float]]:
    """USD per million (input, output) tokens by model, from a [models] table of model = [input, output]."""
    try:
        table = tomllib.loads(text).get("models")
    except tomllib.TOMLDecodeError as e:
        raise AutointerpError(
            f"price table {where} is not valid TOML: {e}",
            'write lines like "gpt-4o-mini" = [0.15, 0.60] under [models]',
        ) from None
    if not isinstance(table, dict):
        raise AutointerpError(
            f"price table {where} has no [models] table", 'write lines like "gpt-4o-mini" = [0.15, 0.60] under [models]'
        )
    out = {}
    for model, p in table.items():
        if not (isinstance(p, list) and len(p) == 2 and all(isinstance(x, (int, float)) and x >= 0 for x in p)):
            raise AutointerpError(
                f"price table {where}: {model} = {p!r} is not [input, output] USD per million tokens",
                f'write "{model}" = [input, output], two non-negative numbers',
            )
        out[model] = (float(p[0]), float(p[1]))
    return out


def load_prices(path: str | Path) -> dict[str, tuple[float, float]]:
    """The package's price table with the models of the TOML file at path added or replaced."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise AutointerpError(f"cannot read price table {path}: {e.strerror}", "check the path of --prices") from None
    return DEFAULT_PRICES | read_prices(text, str(path))


# USD per million (input, output) tokens: data/prices.toml, installed with the package.
DEFAULT_PRICES = read_prices(files("autointerp.data").joinpath("prices.toml").read_text(), "data/prices.toml")
SNAPSHOT_SUFFIX = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8}|latest)$")


def price_of(prices: dict[str, tuple[float, float]], model: str) -> tuple[float, float] | None:
    """A model's price; a dated snapshot (gpt-4o-mini-2024-07-18) takes its family's when not listed."""
    if model in prices:
        return prices[model]
    return prices.get(SNAPSHOT_SUFFIX.sub("", model))
