"""The persistent request cache: a request is never paid for twice.

Keyed by engine identity (engine, model, revision), sampling, the rendered
messages, the sample index and the seed (`base.request_key`). SQLite in WAL
mode, safe for the several worker processes of a stage. Failed requests are
not cached, so a rerun retries them.
"""

from __future__ import annotations

import json
import random
import sqlite3
import time
from pathlib import Path

from data_pipeline.engines.base import Completion, Engine, GenerationRequest, Sampling, request_key


class RequestCache:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path, timeout=60, isolation_level=None)
        # Switching to WAL takes an exclusive lock and does not wait on the busy
        # timeout: several stage tasks opening the cache at once can see
        # "database is locked", so retry it.
        for attempt in range(100):
            try:
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, completion TEXT NOT NULL)")
                break
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or attempt == 99:
                    raise
                time.sleep(0.05 + random.random() * 0.1)
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.hits = 0
        self.misses = 0

    def get_many(self, keys: list[str]) -> dict[str, Completion]:
        out: dict[str, Completion] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i: i + 500]
            q = f"SELECT key, completion FROM responses WHERE key IN ({','.join('?' * len(chunk))})"
            for k, v in self.db.execute(q, chunk):
                out[k] = Completion(**json.loads(v))
        return out

    def put_many(self, items: list[tuple[str, Completion]]) -> None:
        rows = [(k, json.dumps(c.to_dict(), sort_keys=True)) for k, c in items if c.finish_reason != "error"]
        if rows:
            with self.db:
                self.db.executemany("INSERT OR REPLACE INTO responses (key, completion) VALUES (?, ?)", rows)

    def close(self) -> None:
        self.db.close()


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
