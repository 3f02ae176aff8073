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
                    on_result=None, on_new=None) -> list[Completion]:
    """Answer requests from the cache and send only the missing ones to the
    engine. Each answer is stored the moment the engine hands it over, so a run
    killed at any point resends only the requests that were in flight.
    `on_result(1)` is called per answered request, `on_new(completion)` per
    completion the engine produced (not cached)."""
    ident = engine.identity()
    keys = [request_key(ident, sampling, r) for r in requests]
    found = cache.get_many(keys)
    cache.hits += len(found)
    todo = [i for i, k in enumerate(keys) if k not in found]
    cache.misses += len(todo)

    def store(j: int, completion: Completion) -> None:
        i = todo[j]
        cache.put_many([(keys[i], completion)])
        found[keys[i]] = completion
        if on_new:
            on_new(completion)
        if on_result:
            on_result(1)

    if todo:
        outs = engine.generate([requests[i] for i in todo], sampling, on_result=store)
        for j, c in enumerate(outs):  # engines that do not call on_result
            if keys[todo[j]] not in found:
                store(j, c)
    return [found[k] for k in keys]
