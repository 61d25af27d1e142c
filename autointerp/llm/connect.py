"""Connecting a stage to its LLM: the API key, then the client that the provider's registry entry names.

The one module that knows both the live clients (client.py) and the batch APIs (batch.py), so the
imports run one way: providers ← client ← batch ← connect. Both clients are chosen by the
provider's wire protocol (`Provider.protocol`), never by its name.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from autointerp.config import LLMConfig
from autointerp.errors import AutointerpError
from autointerp.llm.batch import BATCH_ENDPOINTS, BatchClient
from autointerp.llm.client import CLIENTS, CallStore, LLMClient, Secret
from autointerp.llm.providers import PROVIDERS


def resolve_key(config: LLMConfig, keys: Mapping[str, Secret] | None = None) -> Secret | None:
    """The key from $config.api_key_env, else from `keys` (see client.load_keys), else None."""
    if config.api_key_env and (value := os.environ.get(config.api_key_env)):
        return Secret(value, f"${config.api_key_env}")
    return (keys or {}).get(config.provider)


def make_client(
    config: LLMConfig,
    store: CallStore,
    keys: Mapping[str, Secret] | None = None,
    fatal: Callable[[], str | None] | None = None,
) -> LLMClient:
    """The client for config.provider, through its batch API when config.batch. Use it within one event
    loop; `await client.aclose()` after. A missing key that the provider requires is refused here,
    before any request."""
    spec = PROVIDERS[config.provider]
    key = resolve_key(config, keys)
    if key is None and spec.key_required:
        raise AutointerpError(
            f"no API key for provider {config.provider!r}",
            f'export {config.api_key_env}=<key>, or add {config.provider} = "<key>" to a keys file (--keys-file)',
        )
    live = CLIENTS[spec.protocol](config, store, key, fatal)
    if config.batch:  # LLMConfig has checked spec.batch_api
        return BatchClient(live, BATCH_ENDPOINTS[spec.protocol](live))
    return live
