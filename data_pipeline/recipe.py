"""Recipe schema and resolution (`extends:`), with errors that name the file,
the line and the field path.

Merge rule (DESIGN.md): mappings merge recursively, a `null` value deletes the
key, lists and scalars replace. Stages are an ordered mapping keyed by stage
id, so an ablation changes or deletes one stage by name; a stage added by a
child goes after its parent's stages.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from data_pipeline.errors import Problem, RecipeError
from data_pipeline.ops import OPS, OpParams, OpSpec
from data_pipeline.registries import BENCHMARK_NAMES
from data_pipeline.yamlio import load_yaml

NAME_RE = r"^[a-z0-9][a-z0-9._-]{0,95}$"
SEMVER_RE = r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?$"
# org/name, each part without a leading dot: no "..", no absolute paths, no "/" beyond one.
_PART = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}"
REPO_RE = rf"^{_PART}/{_PART}$"
MAX_EXTENDS_DEPTH = 16


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourceSpec(Strict):
    uri: str = Field(min_length=1)
    count: int | None = Field(default=None, gt=0, description="rows to generate or read (default: all)")
    weight: float | None = Field(default=None, ge=0, description="relative share of the mix (needs mix.size)")
    seed: int = 0
    fields: dict[str, str] | None = Field(default=None, description="our field -> the source's column")
    split: str | None = None

    @field_validator("uri")
    @classmethod
    def _scheme(cls, v: str) -> str:
        if v.startswith(("nano://", "hf://", "file://")):
            return v
        if "://" in v:
            raise ValueError(f"unsupported URI scheme in {v!r}; use nano://, hf://, file:// or a local path")
        if not v.endswith((".jsonl", ".json", ".parquet", ".jsonl.gz")):
            raise ValueError(f"local source {v!r} must be a .jsonl, .json or .parquet file")
        return v

    @field_validator("fields")
    @classmethod
    def _fields(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is not None:
            unknown = set(v) - {"problem", "answer", "id"}
            if unknown:
                raise ValueError(f"unknown target field(s) {sorted(unknown)}; map onto problem, answer or id")
        return v


class MixSpec(Strict):
    size: int | None = Field(default=None, gt=0)
    seed: int = 0


class OutputSpec(Strict):
    repo: str = Field(pattern=REPO_RE, description="org/name in the registry")

    @field_validator("repo")
    @classmethod
    def _no_dots(cls, v: str) -> str:
        if any(part in (".", "..") or ".." in part for part in v.split("/")):
            raise ValueError(f"{v!r} is not a valid repo name (no '..' allowed)")
        return v


class RayExecution(Strict):
    """Where the `ray` executor runs (docs/scale-out.md)."""

    address: str | None = Field(
        default=None, description="`auto` or `ray://host:port` to join a running cluster; unset: the cluster this "
        "process already joined (ray.init), else a local one started for the run")


class SlurmExecution(Strict):
    """What the `slurm` executor writes into each stage's sbatch script (docs/scale-out.md)."""

    partition: str = Field(min_length=1)
    time: str = Field(default="04:00:00", pattern=r"^\d+(-\d+)?(:\d+){0,2}$",
                      description="per array task: minutes, HH:MM:SS or D-HH:MM:SS")
    qos: str | None = None
    account: str | None = None
    env_command: str | None = Field(default=None, description="run before the task, e.g. `module load python; "
                                    "source /shared/ct/.venv/bin/activate` (default: activate this venv)")
    venv: str | None = Field(default=None, description="a venv folder to activate (instead of env_command)")
    sbatch_args: dict[str, str | int] = Field(default_factory=dict, description="more #SBATCH options, e.g. "
                                              "{constraint: cpu, exclusive: ''}")
    job_name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]+$", description="default: ct-<recipe name>")
    max_array_size: int = Field(default=1001, gt=0, description="the cluster's MaxArraySize")
    logging_dir: str | None = Field(default=None, description="job folders (scripts, pickled executors, logs), "
                                    "on a filesystem every node sees; default: <cache>/jobs")

    @model_validator(mode="after")
    def _one_env(self) -> "SlurmExecution":
        if self.env_command and self.venv:
            raise ValueError("give `env_command` or `venv`, not both")
        return self


class ExecutionSpec(Strict):
    """How the data stages run; not part of any fingerprint (same data on any machine).

    `local` runs each stage on datatrove's LocalPipelineExecutor, `ray` on its
    RayPipelineExecutor, `slurm` submits one array job per stage (plus a small
    job that commits the stage to the cache) with SlurmPipelineExecutor, chained
    by dependencies. `tasks` is the number of shards a global or source stage
    writes (a map stage runs one task per input shard), `workers` how many
    tasks run at once. The resources are reserved per task on Ray and Slurm."""

    executor: Literal["local", "ray", "slurm"] = "local"
    tasks: int = Field(default=2, gt=0, le=4096)
    workers: int = Field(default=2, gt=0, le=4096)
    cpus_per_task: int = Field(default=1, gt=0, le=1024, description="ray and slurm; an op that runs its own "
                               "processes (verify) uses this many")
    mem_per_cpu_gb: float = Field(default=2.0, gt=0, le=4096, description="ray and slurm")
    ray: RayExecution = RayExecution()
    slurm: SlurmExecution | None = None

    @model_validator(mode="after")
    def _slurm_section(self) -> "ExecutionSpec":
        if self.executor == "slurm" and self.slurm is None:
            raise ValueError("executor `slurm` needs a `slurm` section with at least `partition`")
        return self


class DataSpec(Strict):
    sources: dict[str, SourceSpec] = Field(min_length=1)
    mix: MixSpec = MixSpec()
    stages: dict[str, dict[str, Any]] = Field(default_factory=dict)
    output: OutputSpec | None = Field(default=None, description="default: local/<recipe name>")
    execution: ExecutionSpec = ExecutionSpec()

    @model_validator(mode="after")
    def _weights(self) -> "DataSpec":
        if self.mix.size is not None:
            missing = [k for k, s in self.sources.items() if s.weight is None]
            if missing:
                raise ValueError(f"mix.size is set, so every source needs a weight; missing for {missing}")
            if sum(s.weight or 0 for s in self.sources.values()) <= 0:
                raise ValueError("the source weights sum to zero")
        return self


class ModelSpec(Strict):
    init: str | None = Field(default=None, description="a student made from a config (nano track)")
    name: str | None = Field(default=None, description="a Hub model id or local path")
    revision: str | None = None

    @model_validator(mode="after")
    def _one(self) -> "ModelSpec":
        if (self.init is None) == (self.name is None):
            raise ValueError("give exactly one of `init` (a config-made student) or `name` (a pretrained model)")
        return self


class DatasetRef(Strict):
    """A published dataset to train on instead of the one the recipe builds:
    its card's fingerprint must still equal the recipe's."""

    repo: str = Field(pattern=r"^[\w.-]+/[\w.-]+$")
    revision: str = "main"


class SFTSpec(Strict):
    model: ModelSpec
    dataset: DatasetRef | None = None
    accelerate: str | None = None
    args: dict[str, Any] = Field(default_factory=dict)
    output: OutputSpec | None = None


class SamplingSpec(Strict):
    temperature: float = Field(default=0.0, ge=0, le=5)
    top_p: float = Field(default=1.0, gt=0, le=1)
    max_tokens: int = Field(default=256, gt=0)


class EvalSpec(Strict):
    benchmarks: list[str] = Field(min_length=1)
    samples: int = Field(default=4, gt=0, le=1024)
    sampling: SamplingSpec = SamplingSpec()
    seed: int = 0
    ks: list[int] | None = None
    engine: str = "transformers"
    batch_size: int = Field(default=64, gt=0)

    @field_validator("benchmarks")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        if BENCHMARK_NAMES:
            unknown = [b for b in v if b not in BENCHMARK_NAMES]
            if unknown:
                raise ValueError(f"unknown benchmark(s) {unknown}; registered: {sorted(BENCHMARK_NAMES)}")
        return v

    @model_validator(mode="after")
    def _ks(self) -> "EvalSpec":
        for k in self.ks or []:
            if not 0 < k <= self.samples:
                raise ValueError(f"k={k} must be between 1 and samples={self.samples}")
        return self


PLAN_STAGE_KEYS = {"keep": (0.0, 1.0), "sample_keep": (0.0, 1.0), "mean_prompt_tokens": (0.0, None),
                   "mean_output_tokens": (0.0, None)}


class PlanSpec(Strict):
    """What a run of this recipe is expected to do, for the cost estimate of
    `python -m data_pipeline plan` (docs/plan.md). Hashed into no fingerprint:
    expectations are not data. Hardware figures (throughputs) come from a
    profile; source rows and the share of rows each stage keeps, which depend on
    the data, can be given here."""

    profile: str | None = Field(default=None, description="a shipped profile name (data_pipeline/profiles/<name>.yaml) "
                                "or a .yaml path relative to the file that sets it; default: `default`")
    source_rows: dict[str, int] = Field(default_factory=dict, description="rows of a source (by source name) "
                                        "whose `count` is unset")
    stages: dict[str, dict[str, float]] = Field(default_factory=dict, description="per stage id: keep, sample_keep "
                                                "(shares kept), mean_prompt_tokens, mean_output_tokens")

    @field_validator("profile")
    @classmethod
    def _profile(cls, v: str | None) -> str | None:
        if v is not None and not (re.match(r"^[a-z0-9][a-z0-9_-]*$", v) or
                                  (v.endswith((".yaml", ".yml")) and not Path(v).is_absolute())):
            raise ValueError("a shipped profile name (e.g. `default`) or a relative path to a .yaml file")
        return v

    @field_validator("source_rows")
    @classmethod
    def _rows(cls, v: dict[str, int]) -> dict[str, int]:
        bad = {k: n for k, n in v.items() if n <= 0}
        if bad:
            raise ValueError(f"row counts must be positive: {bad}")
        return v

    @field_validator("stages")
    @classmethod
    def _stage_figures(cls, v: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        for sid, figures in v.items():
            for key, x in figures.items():
                if key not in PLAN_STAGE_KEYS:
                    raise ValueError(f"{sid}.{key}: unknown figure; known: {sorted(PLAN_STAGE_KEYS)}")
                lo, hi = PLAN_STAGE_KEYS[key]
                if not (x > lo if hi is None else lo <= x <= hi):
                    raise ValueError(f"{sid}.{key}: {x} is out of range " +
                                     (f"(must be > {lo:g})" if hi is None else f"[{lo:g}, {hi:g}]"))
        return v


class RecipeSpec(Strict):
    name: str = Field(pattern=NAME_RE)
    version: str = Field(pattern=SEMVER_RE, description="semantic version, e.g. 1.0.0")
    extends: str | None = None
    description: str = ""
    data: DataSpec
    sft: SFTSpec | None = None
    eval: EvalSpec | None = None
    plan: PlanSpec | None = None


@dataclass
class Stage:
    id: str
    op: OpSpec
    params: OpParams


@dataclass
class Recipe:
    path: Path
    spec: RecipeSpec
    raw: dict[str, Any]  # the merged document, `extends` resolved
    chain: list[Path]  # this file first, then its ancestors
    origins: dict[tuple, tuple[str, int | None]] = field(repr=False, default_factory=dict)
    stages: list[Stage] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def version(self) -> str:
        return self.spec.version

    @property
    def dataset_repo(self) -> str:
        out = self.spec.data.output
        return out.repo if out else f"local/{self.name}"

    @property
    def model_repo(self) -> str:
        out = self.spec.sft.output if self.spec.sft else None
        return out.repo if out else f"local/{self.name}"

    def where(self, loc: tuple) -> tuple[str, int | None]:
        """File and line of the closest located ancestor of a field path."""
        loc = tuple(loc)
        while loc:
            if loc in self.origins:
                return self.origins[loc]
            loc = loc[:-1]
        return str(self.path), None


# --------------------------------------------------------------------------- merge

def merge(parent: Any, child: Any) -> Any:
    """DESIGN.md merge rule: mappings merge, None deletes, the rest replaces."""
    if isinstance(parent, dict) and isinstance(child, dict):
        out = dict(parent)
        for k, v in child.items():
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = merge(out[k], v)
            else:
                out[k] = _strip_nulls(v)
        return out
    return _strip_nulls(child)


def _strip_nulls(v: Any) -> Any:
    # A null inside a newly added mapping means "not set": drop it so that the
    # pydantic default applies, as it would in the parent.
    if isinstance(v, dict):
        return {k: _strip_nulls(x) for k, x in v.items() if x is not None}
    return v


def _merge_origins(parent: dict, child_data: Any, child_lines: dict, file: str) -> dict:
    out = dict(parent)

    def drop(prefix: tuple) -> None:
        for k in [k for k in out if k[: len(prefix)] == prefix and len(k) > len(prefix)]:
            del out[k]

    def walk(node: Any, at: tuple) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                p = at + (k,)
                if v is None:
                    drop(p)
                    out.pop(p, None)
                    continue
                if not isinstance(v, dict):
                    drop(p)
                out[p] = (file, child_lines.get(p))
                walk(v, p)
        elif isinstance(node, list):
            for i, item in enumerate(node):
                out[at + (i,)] = (file, child_lines.get(at + (i,)))

    walk(child_data, ())
    return out


def _resolve(path: Path, root: Path, seen: list[Path]) -> tuple[dict, dict, list[Path]]:
    path = path.resolve()
    if path in seen:
        cycle = " -> ".join(str(p) for p in seen[seen.index(path):] + [path])
        raise RecipeError.one(seen[-1], None, "extends", f"`extends` cycle: {cycle}")
    if len(seen) >= MAX_EXTENDS_DEPTH:
        raise RecipeError.one(path, None, "extends", f"`extends` chain deeper than {MAX_EXTENDS_DEPTH}")
    data, lines = load_yaml(path)
    if not isinstance(data, dict):
        raise RecipeError.one(path, lines.get(()), "", f"a recipe must be a YAML mapping, got {type(data).__name__}")
    parent_ref = data.get("extends")
    if parent_ref is None:
        return data, _merge_origins({}, data, lines, str(path)), [path]
    line = lines.get(("extends",))
    if not isinstance(parent_ref, str) or not parent_ref.endswith((".yaml", ".yml")):
        raise RecipeError.one(path, line, "extends", "must be a relative path to a .yaml recipe")
    if Path(parent_ref).is_absolute():
        raise RecipeError.one(path, line, "extends", "must be a relative path, not an absolute one")
    parent_path = (path.parent / parent_ref).resolve()
    if not parent_path.is_relative_to(root):
        raise RecipeError.one(path, line, "extends", f"{parent_ref!r} points outside the recipe tree {root}")
    if not parent_path.is_file():
        raise RecipeError.one(path, line, "extends", f"parent recipe {parent_ref!r} not found (looked at {parent_path})")
    pdata, porigins, pchain = _resolve(parent_path, root, seen + [path])
    merged = merge(pdata, data)
    merged["extends"] = parent_ref
    return merged, _merge_origins(porigins, data, lines, str(path)), [path] + pchain


def recipe_root(path: Path) -> Path:
    """The tree `extends` may reach: the closest enclosing `recipes/` folder, else the file's folder."""
    path = path.resolve()
    for parent in path.parents:
        if parent.name == "recipes":
            return parent
    return path.parent


def load_recipe(path: str | Path) -> Recipe:
    """Load, resolve and validate a recipe; raise RecipeError listing every problem found."""
    path = Path(path)
    raw, origins, chain = _resolve(path, recipe_root(path), [])
    recipe = Recipe(path=path.resolve(), spec=None, raw=raw, chain=chain, origins=origins)  # type: ignore[arg-type]
    problems: list[Problem] = []
    try:
        recipe.spec = RecipeSpec.model_validate(copy.deepcopy(raw))
    except ValidationError as e:
        problems += _problems(recipe, e, ())
    else:
        problems += _validate_stages(recipe)
        from data_pipeline.registries import RECIPE_CHECKS

        for check in RECIPE_CHECKS:
            for loc, msg in check(recipe):
                file, line = recipe.where(loc)
                problems.append(Problem(file, line, ".".join(map(str, loc)), msg))
        from data_pipeline.estimate import check_plan_hints

        problems += check_plan_hints(recipe)  # `plan:` hints must name the recipe's stages and sources
    if problems:
        raise RecipeError(problems)
    return recipe


def _problems(recipe: Recipe, e: ValidationError, prefix: tuple) -> list[Problem]:
    out = []
    for err in e.errors():
        loc = prefix + tuple(x for x in err["loc"] if not (isinstance(x, str) and x.startswith("function-")))
        file, line = recipe.where(loc)
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "string_pattern_mismatch":
            msg = f"invalid value {err.get('input')!r} (expected {_pattern_help(loc)})"
        msg = re.sub(r"^Value error, ", "", msg)
        out.append(Problem(file, line, ".".join(map(str, loc)), msg))
    return out


def _pattern_help(loc: tuple) -> str:
    last = loc[-1] if loc else ""
    return {
        "version": "a semantic version like 1.0.0",
        "name": "lowercase letters, digits, '.', '_' or '-'",
        "repo": "org/name without '..' or extra '/'",
    }.get(str(last), "a different format")


def _validate_stages(recipe: Recipe) -> list[Problem]:
    problems: list[Problem] = []
    for sid, body in recipe.spec.data.stages.items():
        loc = ("data", "stages", sid)
        file, line = recipe.where(loc)
        if not re.match(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$", sid):
            problems.append(Problem(file, line, ".".join(loc), "stage ids are letters, digits, '_', '.', '-'"))
            continue
        op_name = body.get("op") or sid
        op = OPS.get(op_name)
        if op is None:
            problems.append(Problem(file, line, ".".join(loc), f"unknown op {op_name!r}; known ops: {sorted(OPS) or '(none loaded)'}"))
            continue
        if op.kind == "source":
            problems.append(Problem(file, line, ".".join(loc), f"op {op_name!r} makes the first stage from data.sources; it cannot be a stage"))
            continue
        try:
            params = op.params.model_validate(body)
        except ValidationError as e:
            problems += _problems(recipe, e, loc)
            continue
        recipe.stages.append(Stage(sid, op, params))
    return problems
