"""What a recipe is expected to cost, before it runs: rows per stage, teacher
requests and tokens, and GPU hours for the teacher and for SFT.

`python -m data_pipeline plan RECIPE [--profile P ...]` prints it; the inputs,
formulas and the profile format are documented in docs/plan.md.

Every figure carries where it came from (a profile entry, the recipe's
`plan:` section, a recipe field, or a built-in default), so that an estimate
can be checked and corrected one input at a time. Inputs are looked up in
layers, strongest first:

1. profiles given on the command line (`--profile`, the last one first),
2. the recipe's `plan:` section (source rows, per-stage shares and lengths),
3. the recipe's profile (`plan.profile`, default `default`, shipped in
   `data_pipeline/profiles/`),
4. built-in defaults (BUILTIN below).

Within a layer, a figure given for the stage id wins over one given for the
op name, and both over the teacher entry's (for token lengths and accuracy).

Nothing here reads data, imports an engine or touches the network.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from data_pipeline.errors import Problem, RecipeError
from data_pipeline.yamlio import load_yaml

PROFILE_DIR = Path(__file__).with_name("profiles")
NULL_COMMIT = "0" * 40
TRL_DEFAULT_EPOCHS = 3.0  # trl.SFTConfig.num_train_epochs (transformers' TrainingArguments default)
TRL_DEFAULT_MAX_LENGTH = 1024  # trl.SFTConfig.max_length
BUILTIN_LABEL = "built-in default (docs/plan.md)"


# --------------------------------------------------------------------------- profile format

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TeacherFigures(_Strict):
    """A teacher model's throughput and answer lengths (matched by engine and model)."""

    model: str
    engine: str | None = None  # None: any engine
    tensor_parallel_size: int | None = Field(default=None, ge=1, description="the TP the throughput is for")
    output_tokens_per_s_per_gpu: float | None = Field(
        default=None, gt=0, description="a replica's output tokens/s divided by its GPUs; unset: no GPU")
    mean_output_tokens: float | None = Field(default=None, gt=0)
    mean_prompt_tokens: float | None = Field(default=None, gt=0)
    pass_at_k: dict[int, float] = Field(
        default_factory=dict, description="k -> share of questions with at least one of k samples judged correct; "
        "pass@1 is the share of samples `verify` keeps")
    hardware: str | None = None
    source: str = Field(default="", description="where the throughput comes from")
    lengths_source: str = Field(default="", description="where the token lengths and pass rates come from")

    @model_validator(mode="after")
    def _pass_at_k(self) -> "TeacherFigures":
        for k, v in self.pass_at_k.items():
            if k < 1 or not 0 <= v <= 1:
                raise ValueError(f"pass_at_k: {k}: {v} (k must be >= 1, the share in [0, 1])")
        return self


class StudentFigures(_Strict):
    """SFT throughput for a student (matched by `sft.model.name` or `sft.model.init`)."""

    model: str | None = None
    init: str | None = None
    tokens_per_s_per_gpu: float | None = Field(default=None, gt=0, description="trained tokens/s per GPU")
    cpu_tokens_per_s: float | None = Field(default=None, gt=0, description="trained tokens/s of one CPU machine")
    template_tokens: float = Field(default=0.0, ge=0, description="chat-template tokens a conversation adds")
    hardware: str | None = None
    source: str = ""

    @model_validator(mode="after")
    def _one(self) -> "StudentFigures":
        if (self.model is None) == (self.init is None):
            raise ValueError("give exactly one of `model` or `init`")
        if (self.tokens_per_s_per_gpu is None) == (self.cpu_tokens_per_s is None):
            raise ValueError("give exactly one of `tokens_per_s_per_gpu` or `cpu_tokens_per_s`")
        return self


class StageFigures(_Strict):
    """Expected behaviour of a stage (by stage id or op name)."""

    keep: float | None = Field(default=None, ge=0, le=1, description="share of rows (questions) kept")
    sample_keep: float | None = Field(default=None, ge=0, le=1, description="share of teacher samples kept selected")
    mean_prompt_tokens: float | None = Field(default=None, gt=0)
    mean_output_tokens: float | None = Field(default=None, gt=0)
    source: str = ""


class SourceRows(_Strict):
    rows: int = Field(gt=0)
    source: str = ""


class Profile(_Strict):
    name: str
    extends: str | None = Field(default=None, description="a profile whose entries this one falls back to")
    description: str = ""
    hardware: str = ""
    teachers: list[TeacherFigures] = Field(default_factory=list)
    students: list[StudentFigures] = Field(default_factory=list)
    stages: dict[str, StageFigures] = Field(default_factory=dict)
    sources: dict[str, SourceRows] = Field(default_factory=dict, description="by Hub repo, `repo:split` or source name")


# --------------------------------------------------------------------------- figures and layers

@dataclass
class Fig:
    """A number and where it came from."""

    value: float
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "source": self.source}


@dataclass
class Layer:
    label: str  # e.g. "profile default", "recipe plan"
    profile: Profile
    where: str = ""  # the file, e.g. "data_pipeline/profiles/default.yaml"

    @property
    def description(self) -> str:
        return f"{self.label} ({self.where})" if self.where else self.label


def profile_path(ref: str, base: Path | None = None) -> Path:
    """A shipped profile's file (`default` -> data_pipeline/profiles/default.yaml), or
    a path (relative to `base`, else to the working directory)."""
    if re.match(r"^[a-z0-9][a-z0-9_-]*$", ref):
        path = PROFILE_DIR / f"{ref}.yaml"
        if not path.is_file():
            shipped = sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))
            raise FileNotFoundError(f"no shipped profile {ref!r}; shipped: {shipped}")
        return path
    path = Path(ref)
    if not path.is_absolute() and base is not None:
        path = base / path
    if not path.is_file():
        raise FileNotFoundError(f"profile file {path} not found")
    return path


def load_profile(ref: str, base: Path | None = None) -> tuple[Profile, Path]:
    path = profile_path(ref, base)
    data, lines = load_yaml(path)
    try:
        return Profile.model_validate(data), path
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = tuple(err["loc"])
            line = None
            for i in range(len(loc), 0, -1):
                if loc[:i] in lines:
                    line = lines[loc[:i]]
                    break
            msg = "unknown key" if err["type"] == "extra_forbidden" else re.sub(r"^Value error, ", "", err["msg"])
            problems.append(Problem(str(path), line, ".".join(map(str, loc)), msg))
        raise RecipeError(problems) from None


def _short(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _hint_layer(recipe) -> Layer | None:
    """The recipe's `plan:` section as a layer (its stage figures and source rows)."""
    spec = recipe.spec.plan
    if spec is None:
        return None
    stages = {}
    for sid, figures in spec.stages.items():
        file, line = recipe.where(("plan", "stages", sid))
        stages[sid] = StageFigures(**figures, source=f"{Path(file).name}:{line}" if line else Path(file).name)
    sources = {}
    for name, rows in spec.source_rows.items():
        file, line = recipe.where(("plan", "source_rows", name))
        sources[name] = SourceRows(rows=rows, source=f"{Path(file).name}:{line}" if line else Path(file).name)
    return Layer("recipe plan", Profile(name="recipe plan", stages=stages, sources=sources), _short(recipe.path))


def check_plan_hints(recipe) -> list[Problem]:
    """`plan.stages` must name stages of the recipe and `plan.source_rows` its sources."""
    spec = recipe.spec.plan
    if spec is None:
        return []
    problems = []
    stage_ids = {"mix"} | {s.id for s in recipe.stages}
    for sid in spec.stages:
        if sid not in stage_ids:
            file, line = recipe.where(("plan", "stages", sid))
            problems.append(Problem(file, line, f"plan.stages.{sid}",
                                    f"no stage {sid!r} in this recipe; stages: {sorted(stage_ids)}"))
    for name in spec.source_rows:
        if name not in recipe.spec.data.sources:
            file, line = recipe.where(("plan", "source_rows", name))
            problems.append(Problem(file, line, f"plan.source_rows.{name}",
                                    f"no source {name!r}; sources: {sorted(recipe.spec.data.sources)}"))
    return problems


def profile_layers(ref: str, base: Path | None = None) -> list[Layer]:
    """A profile and the profiles it `extends`, strongest first."""
    out: list[Layer] = []
    seen: list[Path] = []
    while ref is not None:
        prof, path = load_profile(ref, base)
        if path.resolve() in seen:
            raise RecipeError([Problem(str(path), None, "extends", "profile `extends` cycle: " +
                                       " -> ".join(str(p) for p in seen + [path.resolve()]))])
        seen.append(path.resolve())
        out.append(Layer(f"profile {prof.name}", prof, _short(path)))
        ref, base = prof.extends, path.parent
    return out


def layers_for(recipe, cli_profiles: list[str] | None = None) -> list[Layer]:
    """The lookup layers, strongest first (see the module docstring)."""
    out: list[Layer] = []
    for ref in reversed(cli_profiles or []):
        out += profile_layers(ref)
    hint = _hint_layer(recipe)
    if hint is not None:
        out.append(hint)
    ref, base = "default", None
    if recipe.spec.plan is not None and recipe.spec.plan.profile:
        ref = recipe.spec.plan.profile
        base = Path(recipe.where(("plan", "profile"))[0]).parent
    out += profile_layers(ref, base)
    # A profile reached twice (a command-line profile that `extends: default`, over the recipe's
    # default) counts once, at its weakest place: a parent is a fallback, never above the recipe's hints.
    unique: list[Layer] = []
    for i, layer in enumerate(out):
        if layer.description not in [later.description for later in out[i + 1:]]:
            unique.append(layer)
    return unique


# Built-in defaults per op (docs/plan.md says why each is what it is).
BUILTIN: dict[str, dict[str, float]] = {
    "filter": {"keep": 0.95},
    "dedup": {"keep": 0.95},
    "decontaminate": {"keep": 0.99},
    "distill": {"sample_keep": 1.0},
    "verify": {"sample_keep": 0.5},
    "select": {"keep": 0.5},
}


def _teacher_value(entry: TeacherFigures, what: str) -> float | None:
    if what.startswith("pass@"):
        return entry.pass_at_k.get(int(what[5:]))
    return getattr(entry, what)


def _stage_fig(layers: list[Layer], sid: str, op: str, name: str, teacher: tuple[str, str] | None = None,
               teacher_field: str | None = None) -> Fig | None:
    """A stage figure: per layer, the stage id's, the op's, then the teacher entry's
    `teacher_field` (an attribute, or `pass@k`)."""
    for layer in layers:
        for key in (sid, op):
            st = layer.profile.stages.get(key)
            if st is not None and getattr(st, name) is not None:
                note = f" ({st.source})" if st.source else ""
                return Fig(float(getattr(st, name)), f"{layer.label}: stages.{key}.{name}{note}")
        if teacher is not None and teacher_field:
            entry = _teacher_entry(layer, *teacher)
            value = None if entry is None else _teacher_value(entry, teacher_field)
            if value is not None:
                return Fig(float(value), f"{layer.label}: teacher {entry.model} {teacher_field}" +
                           (f" ({entry.lengths_source})" if entry.lengths_source else ""))
    return None


def _builtin(op: str, name: str) -> Fig | None:
    v = BUILTIN.get(op, {}).get(name)
    return None if v is None else Fig(v, BUILTIN_LABEL)


def _teacher_entry(layer: Layer, engine: str, model: str) -> TeacherFigures | None:
    for t in layer.profile.teachers:
        if t.model == model and t.engine in (None, engine):
            return t
    return None


def _find_teacher(layers: list[Layer], engine: str, model: str) -> tuple[TeacherFigures, str] | None:
    for layer in layers:
        t = _teacher_entry(layer, engine, model)
        if t is not None:
            return t, layer.label
    return None


def _find_student(layers: list[Layer], name: str | None, init: str | None) -> tuple[StudentFigures, str] | None:
    for layer in layers:
        for s in layer.profile.students:
            if (name is not None and s.model == name) or (init is not None and s.init == init):
                return s, layer.label
    return None


# --------------------------------------------------------------------------- the estimate

@dataclass
class StageEstimate:
    id: str
    op: str
    rows_in: float | None
    rows_out: float
    questions: float
    samples: float | None  # selected teacher samples in all (None before a distill stage)
    basis: list[str] = field(default_factory=list)  # how rows_out was computed, with sources


@dataclass
class TeacherEstimate:
    stage: str
    engine: str
    model: str
    samples: int
    questions: float
    requests: float
    mean_prompt_tokens: Fig | None
    mean_output_tokens: Fig | None
    prompt_tokens: float | None
    output_tokens: float | None
    throughput: Fig | None  # output tokens/s per GPU
    gpu_hours: float | None
    tensor_parallel_size: int
    data_parallel_size: int
    wall_hours: float | None
    cost: float | None = None
    currency: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class SFTEstimate:
    student: str
    conversations: float
    mean_tokens: Fig | None  # tokens per conversation (capped at max_length)
    max_length: int
    packing: bool
    epochs: Fig
    sequences: float  # sequences seen in training (conversations x epochs, or max_steps x batch)
    tokens: float | None
    throughput: Fig | None
    gpu_hours: float | None
    cpu_hours: float | None
    gpus: int | None = None  # processes of the accelerate config
    wall_hours: float | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Estimate:
    recipe: str
    version: str
    layers: list[str]
    stages: list[StageEstimate]
    teachers: list[TeacherEstimate]
    sft: SFTEstimate | None
    warnings: list[str]

    @property
    def teacher_gpu_hours(self) -> float | None:
        hours = [t.gpu_hours for t in self.teachers]
        return None if any(h is None for h in hours) else sum(hours)

    @property
    def sft_gpu_hours(self) -> float | None:
        return None if self.sft is None else self.sft.gpu_hours if self.sft.cpu_hours is None else 0.0

    @property
    def gpu_hours(self) -> float | None:
        parts = [self.teacher_gpu_hours, self.sft_gpu_hours if self.sft is not None else 0.0]
        return None if any(p is None for p in parts) else sum(parts)

    def to_dict(self) -> dict[str, Any]:
        def conv(x: Any) -> Any:
            if isinstance(x, Fig):
                return x.to_dict()
            if isinstance(x, dict):
                return {k: conv(v) for k, v in x.items()}
            if isinstance(x, list):
                return [conv(v) for v in x]
            return x

        return {
            "recipe": self.recipe, "version": self.version, "layers": self.layers,
            "stages": [conv(asdict(s)) for s in self.stages],
            "teachers": [conv({k: getattr(t, k) for k in t.__dataclass_fields__}) for t in self.teachers],
            "sft": None if self.sft is None else conv({k: getattr(self.sft, k) for k in self.sft.__dataclass_fields__}),
            "totals": {"teacher_gpu_hours": self.teacher_gpu_hours, "sft_gpu_hours": self.sft_gpu_hours,
                       "gpu_hours": self.gpu_hours},
            "warnings": self.warnings,
        }


def _source_rows(name: str, spec, layers: list[Layer]) -> Fig | None:
    """Rows of one source: its `count`, else a layer's rows for the source name,
    the Hub `repo:split`, or the Hub repo."""
    if spec.count is not None:
        return Fig(float(spec.count), f"data.sources.{name}.count")
    keys = [name]
    if spec.uri.startswith("hf://"):
        from data_pipeline.sources import parse_hf

        ref = parse_hf(spec.uri, spec.split)
        keys += [f"{ref.repo}/{ref.config}:{ref.split}" if ref.config else f"{ref.repo}:{ref.split}", ref.repo]
    for layer in layers:
        for k in keys:
            s = layer.profile.sources.get(k)
            if s is not None:
                return Fig(float(s.rows), f"{layer.label}: sources.{k}" + (f" ({s.source})" if s.source else ""))
    return None


def _fmt(x: float | None, digits: int = 0) -> str:
    if x is None:
        return "?"
    return f"{x:,.{digits}f}"


def estimate(recipe, cli_profiles: list[str] | None = None) -> Estimate:
    """The cost estimate of a loaded recipe (see docs/plan.md for the formulas)."""
    problems = check_plan_hints(recipe)
    if problems:
        raise RecipeError(problems)
    layers = layers_for(recipe, cli_profiles)
    warnings: list[str] = []
    data = recipe.spec.data

    # ---- sources and mix
    known: dict[str, Fig | None] = {}
    for name, spec in data.sources.items():
        known[name] = _source_rows(name, spec, layers)
        if spec.uri.startswith("hf://") and f"@{NULL_COMMIT}" in spec.uri:
            warnings.append(f"source {name!r} is pinned to the null commit {NULL_COMMIT[:7]}... (a placeholder): "
                            "pin the dataset's real commit before running (HfApi().dataset_info(repo).sha)")
    if data.mix.size is not None:
        q = float(data.mix.size)
        basis = [f"{data.mix.size:,} = data.mix.size"]
        total_w = sum(s.weight or 0 for s in data.sources.values())
        for name, spec in data.sources.items():
            quota = data.mix.size * (spec.weight or 0) / total_w
            rows = known[name]
            if rows is not None and quota > rows.value:
                warnings.append(f"source {name!r}: its quota {quota:,.0f} exceeds its {rows.value:,.0f} rows "
                                f"({rows.source}): "
                                "mix upsamples it, and an exact dedup stage then removes the repeats")
    else:
        missing = [n for n, f in known.items() if f is None]
        if missing:
            raise RecipeError([Problem(str(recipe.path), None, f"data.sources.{m}",
                                       "the estimate needs this source's row count: set its `count`, "
                                       f"`plan.source_rows.{m}`, or a profile's `sources` entry") for m in missing])
        q = sum(f.value for f in known.values())
        basis = [f"{f.value:,.0f} ({f.source})" for f in known.values()]
    stages = [StageEstimate("mix", "mix", None, q, q, None, basis)]

    # ---- stages
    samples_total: float | None = None
    teachers: list[TeacherEstimate] = []
    teacher_ctx: tuple[str, str] | None = None
    asked = 1  # samples asked per question by the last distill stage (pass@k's k)
    for st in recipe.stages:
        op, p = st.op.name, st.params
        q_in = q
        basis = []

        def fig(name: str, teacher_field: str | None = None) -> Fig | None:
            return _stage_fig(layers, st.id, op, name, teacher_ctx, teacher_field) or _builtin(op, name)

        if op == "distill":
            teacher_ctx, asked = (p.engine, p.model), p.samples
            t = _teacher(st, p, q, layers, warnings)
            teachers.append(t)
            samples_total = q * p.samples
            basis.append(f"{_fmt(q)} questions x {p.samples} samples = {_fmt(samples_total)} requests")
            sk = fig("sample_keep")
            if sk is not None and sk.value < 1:
                samples_total *= sk.value
                basis.append(f"samples kept {sk.value:g} ({sk.source})")
        elif op == "verify":
            if p.keep == "all":
                keep = sk = Fig(1.0, "verify keep: all (verification off)")
            else:
                sk = fig("sample_keep", "pass@1")
                per_q = (samples_total / q) if (samples_total and q) else 1.0
                keep = _stage_fig(layers, st.id, op, "keep", teacher_ctx, f"pass@{asked}")
                if keep is None:
                    keep = Fig(1 - (1 - sk.value) ** per_q,
                               f"1 - (1 - {sk.value:g})^{per_q:.3g}: samples assumed independent, an upper bound")
            q = q * keep.value
            basis.append(f"questions kept {keep.value:.4g} ({keep.source})")
            if samples_total is not None:
                if p.keep == "any_correct":
                    samples_total = (samples_total / q_in) * q if q_in else 0.0
                    basis.append("every finished sample of a kept question stays selected (keep: any_correct)")
                else:
                    samples_total *= sk.value
                    basis.append(f"samples kept {sk.value:.4g} ({sk.source})")
        elif op == "select":
            for part in ("difficulty", "length", "diversity"):
                sp = getattr(p, part)
                if sp is None:
                    continue
                size, frac = getattr(sp, "size", None), getattr(sp, "fraction", None)
                if size is not None:
                    q = min(q, float(size))
                    basis.append(f"{part}: at most {size:,} questions (select.{part}.size)")
                elif frac is not None:
                    q = float(math.ceil(q * frac))
                    basis.append(f"{part}: {frac:g} of the questions (select.{part}.fraction)")
                elif part == "difficulty":
                    keep = fig("keep")
                    q *= keep.value
                    basis.append(f"difficulty: questions kept {keep.value:g} ({keep.source})")
                else:
                    basis.append(f"{part}: measured only (no size or fraction)")
            if samples_total is not None and q_in:
                samples_total *= q / q_in
        elif op == "format":
            if samples_total is None:
                warnings.append(f"stage {st.id!r} (format) has no distill stage before it: no conversations")
                samples_total = 0.0
            stages.append(StageEstimate(st.id, op, q_in, samples_total, q, samples_total,
                                        [f"one conversation per selected sample: {_fmt(samples_total)}"]))
            continue
        else:
            keep = fig("keep")
            if keep is None:
                keep = Fig(1.0, f"no figure for op {op!r}: nothing assumed dropped")
                warnings.append(f"stage {st.id!r}: no keep figure for op {op!r} in any profile; assumed 1.0")
            q *= keep.value
            basis.append(f"questions kept {keep.value:.4g} ({keep.source})")
            if samples_total is not None:
                responses = getattr(p, "responses", None)
                sk = _stage_fig(layers, st.id, op, "sample_keep")
                if responses is not None and sk is not None:
                    samples_total *= sk.value
                    basis.append(f"samples kept {sk.value:.4g} ({sk.source})")
                else:
                    samples_total *= keep.value
        stages.append(StageEstimate(st.id, op, q_in, q, q, samples_total, basis))

    sft = _sft(recipe, stages[-1], teachers, layers, warnings)
    return Estimate(recipe.name, recipe.version, [lay.description for lay in layers], stages, teachers, sft, warnings)


def _teacher(st, p, questions: float, layers: list[Layer], warnings: list[str]) -> TeacherEstimate:
    requests = questions * p.samples
    ctx = (p.engine, p.model)
    mean_out = _stage_fig(layers, st.id, "distill", "mean_output_tokens", ctx, "mean_output_tokens")
    mean_prompt = _stage_fig(layers, st.id, "distill", "mean_prompt_tokens", ctx, "mean_prompt_tokens")
    notes = []
    if mean_out is None:
        warnings.append(f"stage {st.id!r}: no mean_output_tokens for {p.engine} {p.model}; "
                        "teacher tokens and GPU hours unknown (add a profile entry or plan.stages.<id>)")
    elif mean_out.value > p.sampling.max_tokens:
        mean_out = Fig(float(p.sampling.max_tokens),
                       f"capped at sampling.max_tokens (was {mean_out.value:,.0f}: {mean_out.source})")
    out_tokens = None if mean_out is None else requests * mean_out.value
    prompt_tokens = None if mean_prompt is None else requests * mean_prompt.value
    if p.on_truncated == "retry":
        notes.append("truncation retries (on_truncated: retry) are not counted")
    tp, dp = p.runtime.tensor_parallel_size, p.runtime.data_parallel_size
    found = _find_teacher(layers, p.engine, p.model)
    throughput, gpu_hours, wall = None, None, None
    if p.engine == "procedural":
        gpu_hours, wall = 0.0, None
        notes.append("procedural teacher: runs on the CPU, no GPU")
    elif found is not None and found[0].output_tokens_per_s_per_gpu is not None:
        entry, label = found
        hw = f", {entry.hardware}" if entry.hardware else ""
        tp_note = f" tp{entry.tensor_parallel_size}" if entry.tensor_parallel_size else ""
        throughput = Fig(entry.output_tokens_per_s_per_gpu,
                         f"{label}: teacher {entry.engine or 'any'} {entry.model}{tp_note}{hw}" +
                         (f" ({entry.source})" if entry.source else ""))
        if entry.tensor_parallel_size and p.engine == "vllm" and entry.tensor_parallel_size != tp:
            warnings.append(f"stage {st.id!r}: the throughput figure is for tensor_parallel_size "
                            f"{entry.tensor_parallel_size}, the recipe runs {tp}; the per-GPU figure is used unchanged")
        if out_tokens is not None:
            gpu_hours = out_tokens / throughput.value / 3600
            if p.engine == "vllm":
                wall = gpu_hours / (tp * dp)
    else:
        warnings.append(f"stage {st.id!r}: no output_tokens_per_s_per_gpu for {p.engine} {p.model} in any profile: "
                        "teacher GPU hours unknown")
    cost = currency = None
    if p.price is not None and prompt_tokens is not None and out_tokens is not None:
        cost = (prompt_tokens * p.price.prompt_per_mtok + out_tokens * p.price.completion_per_mtok) / 1e6
        currency = p.price.currency
    return TeacherEstimate(st.id, p.engine, p.model, p.samples, questions, requests, mean_prompt, mean_out,
                           prompt_tokens, out_tokens, throughput, gpu_hours, tp, dp, wall, cost, currency, notes)


def _sft(recipe, last: StageEstimate, teachers: list[TeacherEstimate], layers: list[Layer],
         warnings: list[str]) -> SFTEstimate | None:
    sft = recipe.spec.sft
    if sft is None:
        return None
    args = sft.args
    convs = last.rows_out
    notes = []
    max_length = int(args.get("max_length", TRL_DEFAULT_MAX_LENGTH))
    packing = bool(args.get("packing", False))
    found = _find_student(layers, sft.model.name, sft.model.init)
    template = found[0].template_tokens if found else 0.0
    mean = None
    if teachers and teachers[-1].mean_output_tokens is not None:
        t = teachers[-1]
        prompt = t.mean_prompt_tokens.value if t.mean_prompt_tokens else 0.0
        raw = prompt + t.mean_output_tokens.value + template
        src = f"prompt {prompt:,.0f} + answer {t.mean_output_tokens.value:,.0f} tokens of {t.stage}" + \
            (f" + chat template {template:,.0f}" if template else "")
        if raw > max_length:
            mean = Fig(float(max_length), f"capped at max_length {max_length} ({src} = {raw:,.0f})")
            notes.append("conversations longer than max_length are truncated (sft.args.max_truncated_share)")
        else:
            mean = Fig(raw, src)
    max_steps = int(args.get("max_steps", -1) or -1)
    gbs = args.get("global_batch_size")
    if max_steps > 0:
        batch = gbs or int(args.get("per_device_train_batch_size", 8)) * int(args.get("gradient_accumulation_steps", 1))
        sequences = float(max_steps * batch)
        epochs = Fig(sequences / convs if convs else 0.0,
                     f"sft.args.max_steps {max_steps} x batch {batch} = {sequences:,.0f} sequences / "
                     f"{convs:,.0f} conversations")
        if packing:
            tokens = sequences * max_length
            notes.append("packing: each sequence is assumed full (max_length tokens)")
        else:
            tokens = None if mean is None else sequences * mean.value
    else:
        e = args.get("num_train_epochs")
        epochs = Fig(float(e), "sft.args.num_train_epochs") if e is not None else \
            Fig(TRL_DEFAULT_EPOCHS, "trl.SFTConfig default num_train_epochs")
        sequences = convs * epochs.value
        tokens = None if mean is None else sequences * mean.value
    student = sft.model.name or f"init:{sft.model.init}"
    throughput = gpu_hours = cpu_hours = None
    if found is None:
        warnings.append(f"no SFT throughput for student {student} in any profile: SFT hours unknown")
    else:
        entry, label = found
        hw = f", {entry.hardware}" if entry.hardware else ""
        src = f"{label}: student {entry.model or 'init:' + str(entry.init)}{hw}" + \
            (f" ({entry.source})" if entry.source else "")
        if entry.tokens_per_s_per_gpu is not None:
            throughput = Fig(entry.tokens_per_s_per_gpu, src)
            gpu_hours = None if tokens is None else tokens / throughput.value / 3600
        else:
            throughput = Fig(entry.cpu_tokens_per_s, src + " [one CPU machine]")
            cpu_hours = None if tokens is None else tokens / throughput.value / 3600
            gpu_hours = 0.0
    gpus = wall = None
    if sft.accelerate and cpu_hours is None:
        gpus = _accelerate_processes(recipe, warnings)
        if gpus and gpu_hours is not None:
            wall = gpu_hours / gpus
    return SFTEstimate(student, convs, mean, max_length, packing, epochs, sequences, tokens, throughput,
                       gpu_hours, cpu_hours, gpus, wall, notes)


def _accelerate_processes(recipe, warnings: list[str]) -> int | None:
    """`num_processes` of the recipe's accelerate config (a path relative to the
    file that sets `sft.accelerate`): the GPUs the SFT run uses."""
    import yaml

    ref = recipe.spec.sft.accelerate
    path = Path(recipe.where(("sft", "accelerate"))[0]).parent / ref
    try:
        n = int((yaml.safe_load(path.read_text()) or {}).get("num_processes") or 0)
    except (OSError, ValueError, TypeError, yaml.YAMLError) as e:
        warnings.append(f"sft.accelerate {ref}: cannot read num_processes ({e}); no SFT wall-clock time")
        return None
    return n or None


# --------------------------------------------------------------------------- text

def _human(x: float | None) -> str:
    if x is None:
        return "?"
    for unit, n in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= n:
            return f"{x / n:,.2f}{unit}"
    return f"{x:,.0f}"


def _hours(x: float | None) -> str:
    return "?" if x is None else f"{x:,.1f}" if x >= 10 else f"{x:,.3g}"


def format_estimate(est: Estimate) -> str:
    lines = [f"cost estimate of {est.recipe} {est.version} (inputs, strongest first: {'; '.join(est.layers)}; "
             "formulas: docs/plan.md)", "", "expected rows:"]
    for s in est.stages:
        rin = "" if s.rows_in is None else f"{_fmt(s.rows_in):>12} ->"
        lines.append(f"  {s.id:<14} {s.op:<14} {rin:>15} {_fmt(s.rows_out):>12}")
        for b in s.basis:
            lines.append(f"  {'':<30}   {b}")
    for t in est.teachers:
        lines += ["", f"teacher ({t.stage}: {t.engine} {t.model}, {t.samples} samples per question):",
                  f"  requests        {_fmt(t.requests):>18}  = {_fmt(t.questions)} questions x {t.samples} samples"]
        if t.mean_prompt_tokens is not None:
            lines.append(f"  prompt tokens   {_human(t.prompt_tokens):>18}  = requests x "
                         f"{t.mean_prompt_tokens.value:,.0f} "
                         f"({t.mean_prompt_tokens.source})")
        if t.mean_output_tokens is not None:
            lines.append(f"  output tokens   {_human(t.output_tokens):>18}  = requests x "
                         f"{t.mean_output_tokens.value:,.0f} "
                         f"({t.mean_output_tokens.source})")
        if t.throughput is not None:
            lines.append(f"  GPU hours       {_hours(t.gpu_hours):>18}  = output tokens / {t.throughput.value:,.0f} "
                         f"tokens/s per GPU / 3600 ({t.throughput.source})")
        else:
            lines.append(f"  GPU hours       {_hours(t.gpu_hours):>18}")
        if t.wall_hours is not None:
            gpus = t.tensor_parallel_size * t.data_parallel_size
            lines.append(f"  wall-clock      {_hours(t.wall_hours):>18}  h on {gpus} GPUs (tensor_parallel_size "
                         f"{t.tensor_parallel_size} x data_parallel_size {t.data_parallel_size})")
        if t.cost is not None:
            lines.append(f"  cost            {t.cost:>18,.2f}  {t.currency} (distill.price)")
        lines += [f"  note: {n}" for n in t.notes]
    if est.sft is not None:
        s = est.sft
        lines += ["", f"SFT ({s.student}):",
                  f"  conversations   {_fmt(s.conversations):>18}",
                  f"  epochs          {s.epochs.value:>18,.3g}  ({s.epochs.source})",
                  f"  conversations seen {_fmt(s.sequences):>15}"]
        if s.mean_tokens is not None:
            lines.append(f"  tokens each     {s.mean_tokens.value:>18,.0f}  ({s.mean_tokens.source})")
        lines.append(f"  tokens          {_human(s.tokens):>18}")
        if s.throughput is not None and s.cpu_hours is None:
            lines.append(f"  GPU hours       {_hours(s.gpu_hours):>18}  = tokens / {s.throughput.value:,.0f} tokens/s "
                         f"per GPU / 3600 ({s.throughput.source})")
        elif s.cpu_hours is not None:
            lines.append(f"  CPU hours       {_hours(s.cpu_hours):>18}  = tokens / {s.throughput.value:,.0f} tokens/s "
                         f"/ 3600 ({s.throughput.source}); no GPU")
        else:
            lines.append(f"  GPU hours       {_hours(s.gpu_hours):>18}")
        if s.wall_hours is not None:
            lines.append(f"  wall-clock      {_hours(s.wall_hours):>18}  h on {s.gpus} GPUs (num_processes of the "
                         "accelerate config; the per-GPU figure is assumed to hold at that scale)")
        lines += [f"  note: {n}" for n in s.notes]
    lines += ["", f"GPU hours: teacher {_hours(est.teacher_gpu_hours)} + SFT {_hours(est.sft_gpu_hours)} "
              f"= {_hours(est.gpu_hours)} (eval not included)"]
    if est.warnings:
        lines += ["", "warnings:"] + [f"  - {w}" for w in est.warnings]
    return "\n".join(lines)
