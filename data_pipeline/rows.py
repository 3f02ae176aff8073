"""The row that every stage carries (DESIGN.md "Rows"), as one Arrow schema.

One row per question: stable `id`, `source`, `problem`, gold `answer` (may be
null), source metadata as JSON text (`meta`, heterogeneous across sources),
the rendered teacher `prompt`, the teacher `responses` with their per-sample
verdicts, and finally `messages` (the SFT conversation, one per kept sample).
Columns are null until the stage that fills them has run. A fixed schema keeps
parquet files byte-identical between runs and readable by `datasets`.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pyarrow as pa

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
RESPONSE = pa.struct(
    [
        ("text", pa.string()),
        ("reasoning", pa.string()),
        ("finish_reason", pa.string()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("engine", pa.string()),
        ("model", pa.string()),
        ("error", pa.string()),
        ("sample_index", pa.int64()),
        ("verdict", pa.string()),  # null (unverified) | correct | incorrect | no_answer | error
        ("extracted", pa.string()),
        ("selected", pa.bool_()),  # goes into the SFT data; set by distill, narrowed by verify/select
    ]
)
ROW_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("problem", pa.string()),
        ("answer", pa.string()),
        ("meta", pa.string()),
        ("prompt", pa.list_(MESSAGE)),
        ("responses", pa.list_(RESPONSE)),
        ("sample_index", pa.int64()),  # set by `format` (one SFT row per kept sample)
        ("messages", pa.list_(MESSAGE)),
    ]
)
DROPPED_SCHEMA = ROW_SCHEMA.append(pa.field("drop_reason", pa.string()))
COLUMNS = ROW_SCHEMA.names


def row_id(source: str, problem: str | None) -> str:
    """Stable id of a question: a hash of its source name and problem text."""
    return hashlib.sha256(f"{source}\x00{problem or ''}".encode()).hexdigest()[:20]


def new_row(source: str, problem: str | None, answer: str | None, meta: str | None = None, id: str | None = None) -> dict[str, Any]:
    row = {c: None for c in COLUMNS}
    row.update(id=id or row_id(source, problem), source=source, problem=problem, answer=answer, meta=meta)
    return row


def to_table(rows: list[dict[str, Any]], schema: pa.Schema = ROW_SCHEMA) -> pa.Table:
    return pa.Table.from_pylist([{c: r.get(c) for c in schema.names} for r in rows], schema=schema)
