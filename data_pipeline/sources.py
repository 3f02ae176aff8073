"""Question sources: `nano://` (procedural), local jsonl/json/parquet files and
`hf://org/name@revision:split` Hub datasets read through `datasets`.

Every source resolves to a revision that goes into the first stage's
fingerprint: the generator's code hash for `nano://`, the file's sha256 for a
local file, the pinned commit for `hf://`. An offline mirror (a JSON file named
by `COMMONTHOUGHTS_HF_MIRROR`, mapping `org/name@revision` to a local file)
serves Hub sources on machines without Hub access.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_pipeline.rows import new_row

HF_RE = re.compile(r"^hf://(?P<repo>[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+)(?:/(?P<config>[A-Za-z0-9_.-]+))?@(?P<rev>[A-Za-z0-9_.-]+)(?::(?P<split>[A-Za-z0-9_.\[\]:%-]+))?$")
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


class SourceError(ValueError):
    pass


@dataclass
class HfRef:
    repo: str
    config: str | None
    revision: str
    split: str


def parse_hf(uri: str, split: str | None = None) -> HfRef:
    m = HF_RE.match(uri)
    if not m:
        raise SourceError(f"{uri!r} is not hf://org/name[/config]@revision[:split] (the revision is required: pin a commit)")
    return HfRef(m["repo"], m["config"], m["rev"], m["split"] or split or "train")


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _local_path(uri: str, base_dir: Path) -> Path:
    p = Path(uri[len("file://"):] if uri.startswith("file://") else uri)
    return p if p.is_absolute() else (base_dir / p)


def _mirror() -> dict[str, str]:
    path = os.environ.get("COMMONTHOUGHTS_HF_MIRROR")
    return json.loads(Path(path).read_text()) if path else {}


def resolve_revision(spec: dict[str, Any], base_dir: Path) -> str:
    uri = spec["uri"]
    if uri.startswith("nano://"):
        from data_pipeline.nano import tasks

        return "nano:" + _file_sha256(Path(tasks.__file__))[:16]
    if uri.startswith("hf://"):
        ref = parse_hf(uri, spec.get("split"))
        if COMMIT_RE.match(ref.revision):
            return ref.revision
        key = f"{ref.repo}@{ref.revision}"
        if key in _mirror():
            return ref.revision
        from huggingface_hub import HfApi

        return HfApi().dataset_info(ref.repo, revision=ref.revision).sha
    path = _local_path(uri, base_dir)
    if not path.is_file():
        raise SourceError(f"source file {path} not found")
    return "sha256:" + _file_sha256(path)


def load_source(name: str, spec: dict[str, Any], base_dir: Path) -> list[dict[str, Any]]:
    """Rows of one source, in the source's order (`count` keeps the first rows)."""
    uri, count, fields = spec["uri"], spec.get("count"), spec.get("fields") or {}
    if uri.startswith("nano://"):
        from data_pipeline.nano import tasks

        kwargs = tasks.parse_nano_uri(uri)
        raw = tasks.generate_source(seed=spec.get("seed", 0), count=count or 1000, **kwargs)
        rows = []
        for r in raw:
            meta = {k: v for k, v in r.items() if k not in ("problem", "answer")}
            rows.append(new_row(name, r["problem"], r["answer"], json.dumps(meta, sort_keys=True)))
        return rows
    records = _read_records(uri, spec, base_dir)
    if count is not None:
        records = records[:count]
    pf, af, idf = fields.get("problem", "problem"), fields.get("answer", "answer"), fields.get("id")
    rows = []
    for rec in records:
        problem, answer = rec.get(pf), rec.get(af)
        meta = {k: v for k, v in rec.items() if k not in (pf, af)}
        rows.append(new_row(
            name,
            None if problem is None else str(problem),
            None if answer is None else str(answer),
            json.dumps(meta, sort_keys=True, default=str),
            id=str(rec[idf]) if idf and rec.get(idf) is not None else None,
        ))
    return rows


def _read_records(uri: str, spec: dict[str, Any], base_dir: Path) -> list[dict[str, Any]]:
    import datasets

    if uri.startswith("hf://"):
        ref = parse_hf(uri, spec.get("split"))
        local = _mirror().get(f"{ref.repo}@{ref.revision}")
        if local is None:
            ds = datasets.load_dataset(ref.repo, ref.config, revision=ref.revision, split=ref.split)
            return ds.to_list()
        uri = local
    path = _local_path(uri, base_dir)
    kind = "parquet" if path.suffix == ".parquet" else "json"
    ds = datasets.load_dataset(kind, data_files=str(path), split="train", keep_in_memory=True)
    return ds.to_list()
