"""The content-addressed stage cache.

`<root>/stages/<fingerprint>/` holds a finished stage: `data/part-*.parquet`
(rows), `dropped/part-*.parquet` (rows the stage removed, with the reason),
`stats.json` and a `_SUCCESS` marker written last. A stage is built in
`<root>/tmp/<fingerprint>/` (a fixed name, so a killed run resumes the ranks it
had finished) and renamed into place in one step, so a reader never sees half
a stage.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

SUCCESS = "_SUCCESS"


def default_cache_root() -> Path:
    return Path(os.environ.get("COMMONTHOUGHTS_CACHE", Path.cwd() / ".cache" / "commonthoughts")).resolve()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; outputs are meant to be read by others
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode())


def write_parquet(table: pa.Table, path: Path) -> None:
    """Write a parquet file atomically; the same table always gives the same bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        pq.write_table(table, tmp, compression="zstd", write_statistics=True)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class StageCache:
    def __init__(self, root: Path | None = None):
        self.root = Path(root or default_cache_root())

    def final_dir(self, fingerprint: str) -> Path:
        return self.root / "stages" / fingerprint

    def work_dir(self, fingerprint: str) -> Path:
        return self.root / "tmp" / fingerprint

    def has(self, fingerprint: str) -> bool:
        return (self.final_dir(fingerprint) / SUCCESS).is_file()

    def shards(self, fingerprint: str, kind: str = "data") -> list[Path]:
        return sorted((self.final_dir(fingerprint) / kind).glob("part-*.parquet"))

    def stats(self, fingerprint: str) -> dict[str, Any]:
        return json.loads((self.final_dir(fingerprint) / "stats.json").read_text())

    def read(self, fingerprint: str, kind: str = "data") -> pa.Table:
        files = self.shards(fingerprint, kind)
        if not files:
            raise FileNotFoundError(f"stage {fingerprint[:12]} has no {kind} shards")
        return pa.concat_tables([pq.read_table(f) for f in files])

    def commit(self, fingerprint: str, stats: dict[str, Any]) -> Path:
        work, final = self.work_dir(fingerprint), self.final_dir(fingerprint)
        atomic_write_json(work / "stats.json", stats)
        (work / SUCCESS).write_text("")
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():  # a concurrent run finished first; theirs is identical
            shutil.rmtree(work)
        else:
            os.rename(work, final)
        return final
