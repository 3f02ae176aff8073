"""The op registry: `data_pipeline` runs ops it does not know by name.

An op is a function over a batch of rows. `map` ops see one shard at a time and
run in parallel; `global` ops see every row of the stage input at once
(dedup, selection); a `source` op makes the first stage's rows from the
recipe's sources. Each op declares a pydantic model for its parameters
(unknown keys are errors) and a code `version` that is part of every
fingerprint: bump it whenever the op's output for the same input changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict


class OpParams(BaseModel):
    """Base for op parameter models: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")
    op: str | None = None  # the op name, when the stage id is not the op name


@dataclass
class OpContext:
    stage_id: str
    stage_dir: Path  # scratch space of this stage's cache entry (request caches, ...)
    cache_root: Path
    rank: int = 0
    world_size: int = 1
    recipe_name: str = ""
    workers: int = 1  # processes an op that parallelises itself may use


@dataclass
class OpResult:
    kept: list[dict[str, Any]]
    dropped: list[tuple[dict[str, Any], str]] = field(default_factory=list)  # (row, reason)
    stats: dict[str, float] = field(default_factory=dict)  # summed over shards


@dataclass
class OpSpec:
    name: str
    version: str
    params: type[OpParams]
    kind: Literal["map", "global", "source"]
    fn: Callable[..., OpResult]
    # extra inputs of the fingerprint that are not in the params (e.g. the
    # resolved revision of a source); called with the validated params.
    fingerprint_extra: Callable[[OpParams], Any] | None = None
    description: str = ""
    # True for ops that run their own worker processes (e.g. scoring with
    # hard timeouts): their ranks then run one at a time in the main process,
    # since datatrove's pool workers are daemons and may not have children.
    # A callable decides per stage (distill: only with the vllm engine).
    self_parallel: bool | Callable[[OpParams], bool] = False
    # Raises ValueError when the stage cannot run on this machine (a missing
    # package, an unset variable): checked before the first stage of a run.
    preflight: Callable[[OpParams], None] | None = None

    def runs_in_main_process(self, params: OpParams) -> bool:
        return self.self_parallel(params) if callable(self.self_parallel) else self.self_parallel


OPS: dict[str, OpSpec] = {}


def register_op(
    name: str,
    *,
    version: str,
    params: type[OpParams],
    kind: Literal["map", "global", "source"] = "map",
    fingerprint_extra: Callable[[OpParams], Any] | None = None,
    self_parallel: bool | Callable[[OpParams], bool] = False,
    preflight: Callable[[OpParams], None] | None = None,
):
    def deco(fn: Callable[..., OpResult]) -> Callable[..., OpResult]:
        if name in OPS and OPS[name].fn is not fn:
            raise ValueError(f"op {name!r} registered twice")
        OPS[name] = OpSpec(name, version, params, kind, fn, fingerprint_extra, (fn.__doc__ or "").strip(),
                          self_parallel, preflight)
        return fn

    return deco
