"""LLM access shared by every stage: the provider registry, clients, batch APIs, the local server."""
