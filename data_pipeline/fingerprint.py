"""Content fingerprints of stages and datasets.

A stage's fingerprint hashes its op name, op code version, normalised
parameters (validated, defaults filled, the stage's own `op` alias removed) and
its input's fingerprint; the first stage hashes its sources with their resolved
revisions. The stage id is not hashed: renaming a stage changes no data.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from data_pipeline.ops import OpParams, OpSpec

FORMAT_VERSION = "1"  # bump when the layout of cached stage outputs changes


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def sha256_hex(text: str | bytes) -> str:
    if isinstance(text, str):
        text = text.encode()
    return hashlib.sha256(text).hexdigest()


def normalise_params(params: OpParams) -> dict[str, Any]:
    """Parameters as hashed: without the `op` alias, without the fields an op
    declares operational (`UNHASHED`: where and how fast it runs, prices), and
    without those its `unhashed_fields()` says cannot matter for these settings
    (a parameter added to one mode of an op leaves the other modes' fingerprints as they were)."""
    d = params.model_dump(mode="json")
    d.pop("op", None)
    for name in getattr(type(params), "UNHASHED", ()):
        d.pop(name, None)
    for name in params.unhashed_fields() if hasattr(params, "unhashed_fields") else ():
        d.pop(name, None)
    return d


def stage_fingerprint(op: OpSpec, params: OpParams, input_fingerprint: str | None) -> str:
    payload = {
        "format": FORMAT_VERSION,
        "op": op.name,
        "version": op.version,
        "params": normalise_params(params),
        "input": input_fingerprint,
        "extra": op.fingerprint_extra(params) if op.fingerprint_extra else None,
    }
    return sha256_hex(canonical_json(payload))


@dataclass
class PlannedStage:
    id: str
    op: OpSpec
    params: OpParams
    input: str | None
    fingerprint: str

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "op": self.op.name,
            "op_version": self.op.version,
            "kind": self.op.kind,
            "params": normalise_params(self.params),
            "input": self.input,
            "fingerprint": self.fingerprint,
        }


def base_model_identity(sft_model: dict[str, Any]) -> str:
    """What the student starts from: a config-made init with the hash of the code
    that makes it, or a pretrained model with its revision."""
    if sft_model.get("init"):
        import importlib.util
        from pathlib import Path

        origin = importlib.util.find_spec("data_pipeline.nano.student").origin
        return f"init:{sft_model['init']}:" + sha256_hex(Path(origin).read_bytes())[:16]
    return f"{sft_model['name']}@{sft_model.get('revision')}"


def model_fingerprint(dataset_fingerprint: str, sft_section: dict[str, Any]) -> str:
    """A trained model's fingerprint: its dataset's fingerprint, the recipe's `sft`
    section and the identity of the base model."""
    base = base_model_identity(sft_section["model"])
    return sha256_hex(canonical_json({"dataset": dataset_fingerprint, "sft": sft_section, "base": base}))
