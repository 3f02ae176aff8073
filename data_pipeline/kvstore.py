"""A small persistent key -> JSON store on SQLite (WAL), safe for the several
worker processes of a stage. The request cache and the verdict cache use it."""

from __future__ import annotations

import json
import random
import re
import sqlite3
import time
from pathlib import Path
from typing import Any


class KVStore:
    def __init__(self, path: Path, table: str):
        if not re.fullmatch(r"[a-z_]+", table):
            raise ValueError(f"bad table name {table!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.table = path, table
        self.db = sqlite3.connect(path, timeout=60, isolation_level=None)
        # Switching to WAL takes an exclusive lock and does not wait on the busy
        # timeout: several stage tasks opening the store at once can see
        # "database is locked", so retry it.
        for attempt in range(100):
            try:
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute(f"CREATE TABLE IF NOT EXISTS {table} (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                break
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or attempt == 99:
                    raise
                time.sleep(0.05 + random.random() * 0.1)
        self.db.execute("PRAGMA synchronous=NORMAL")

    def get_many(self, keys: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i: i + 500]
            q = f"SELECT key, value FROM {self.table} WHERE key IN ({','.join('?' * len(chunk))})"
            for k, v in self.db.execute(q, chunk):
                out[k] = json.loads(v)
        return out

    def put_many(self, items: list[tuple[str, Any]]) -> None:
        rows = [(k, json.dumps(v, sort_keys=True)) for k, v in items]
        if rows:
            with self.db:
                self.db.executemany(f"INSERT OR REPLACE INTO {self.table} (key, value) VALUES (?, ?)", rows)

    def close(self) -> None:
        self.db.close()
