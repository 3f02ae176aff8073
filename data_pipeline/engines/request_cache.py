"""The persistent request cache: a request is never paid for twice.

Keyed by engine identity (engine, model, revision), sampling, the rendered
messages, the sample index and the seed (`base.request_key`). SQLite in WAL
mode, safe for the several worker processes of a stage. Failed requests are
not cached, so a rerun retries them.
"""

from __future__ import annotations

from pathlib import Path

from data_pipeline.engines.base import Completion, Engine, GenerationRequest, Sampling, request_key
from data_pipeline.kvstore import KVStore


class RequestCache:
    def __init__(self, path: Path):
        self.store = KVStore(path, "responses")
        self.hits = 0
        self.misses = 0

    def get_many(self, keys: list[str]) -> dict[str, Completion]:
        return {k: Completion(**v) for k, v in self.store.get_many(keys).items()}

    def put_many(self, items: list[tuple[str, Completion]]) -> None:
        self.store.put_many([(k, c.to_dict()) for k, c in items if c.finish_reason != "error"])

    def close(self) -> None:
        self.store.close()


def cached_generate(engine: Engine, cache: RequestCache, requests: list[GenerationRequest], sampling: Sampling,
                    batch_size: int = 64, on_batch=None) -> list[Completion]:
    """Answer requests from the cache, sending only the missing ones to the
    engine, batch by batch; each answered batch is stored before the next is
    sent, so a killed run loses at most one batch of work."""
    ident = engine.identity()
    keys = [request_key(ident, sampling, r) for r in requests]
    found = cache.get_many(keys)
    cache.hits += len(found)
    todo = [i for i, k in enumerate(keys) if k not in found]
    cache.misses += len(todo)
    for s in range(0, len(todo), batch_size):
        idx = todo[s: s + batch_size]
        outs = engine.generate([requests[i] for i in idx], sampling)
        cache.put_many([(keys[i], c) for i, c in zip(idx, outs)])
        for i, c in zip(idx, outs):
            found[keys[i]] = c
        if on_batch:
            on_batch(len(idx))
    return [found[k] for k in keys]
