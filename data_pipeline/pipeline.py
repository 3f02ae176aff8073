"""Plan and run a recipe's data stages on datatrove executors.

Each stage is one datatrove job: a `map` op runs one task per input shard (in
parallel, `execution.workers` at a time); `global` and `source` ops run one task
that sees every row and writes `execution.tasks` shards. datatrove's per-rank
completion markers let a killed stage resume the ranks it had not finished;
the stage cache (cache.py) makes a finished stage free on the next run.
The job runs on datatrove's local or Ray executor, one stage after the other
(executors.py); the Slurm executor submits every stage at once, chained by
job dependencies (`submit_slurm`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from datatrove.pipeline.base import PipelineStep

from data_pipeline.cache import SUCCESS, StageCache, write_parquet, atomic_write_json
from data_pipeline.errors import PipelineError, RecipeError
from data_pipeline.fingerprint import PlannedStage, stage_fingerprint
from data_pipeline.ops import OPS, OpContext, OpParams, OpResult
from data_pipeline.recipe import ExecutionSpec, Recipe
from data_pipeline.rows import DROPPED_SCHEMA, to_table

def plan(recipe: Recipe) -> list[PlannedStage]:
    """The stage graph of a recipe, with fingerprints (no data is read, except
    to hash local source files)."""
    data = recipe.spec.data
    mix = OPS.get("mix")
    if mix is None:
        raise PipelineError("the `mix` op is not registered (import curation first)")
    mix_params = mix.params.model_validate(
        {"sources": {k: v.model_dump() for k, v in data.sources.items()}, "size": data.mix.size, "seed": data.mix.seed,
         "base_dir": str(recipe.path.parent)}
    )
    fp = stage_fingerprint(mix, mix_params, None)
    stages = [PlannedStage("mix", mix, mix_params, None, fp)]
    for st in recipe.stages:
        try:
            new = stage_fingerprint(st.op, st.params, fp)
        except FileNotFoundError as e:  # data the fingerprint hashes (e.g. benchmark files) is absent
            file, line = recipe.where(("data", "stages", st.id))
            raise RecipeError.one(Path(file), line, f"data.stages.{st.id}", f"cannot compute the fingerprint: {e}") from None
        stages.append(PlannedStage(st.id, st.op, st.params, fp, new))
        fp = new
    return stages


class StageStep(PipelineStep):
    """One stage as a datatrove pipeline step (picklable: carries names and paths).

    The input shards are listed when a task starts, not when the job is made,
    so a Slurm job submitted before its input stage has run reads what that
    stage committed."""

    name = "commonthoughts stage"
    type = "CommonThoughts"

    def __init__(self, stage_id: str, op_name: str, params: OpParams, input_dir: str | None, work_dir: str,
                 out_shards: int, cache_root: str, recipe_name: str, workers: int = 1):
        super().__init__()
        self.stage_id, self.op_name, self.params = stage_id, op_name, params
        self.input_dir, self.work_dir, self.out_shards = input_dir, work_dir, out_shards
        self.cache_root, self.recipe_name, self.workers = cache_root, recipe_name, workers

    def inputs(self) -> list[str]:
        if self.input_dir is None:
            return []
        folder = Path(self.input_dir)
        if not (folder.parent / SUCCESS).is_file():
            raise PipelineError(f"stage {self.stage_id!r}: its input stage {folder.parent.name[:12]} is not in the "
                                f"cache (did the job it depends on fail?)")
        return [str(p) for p in sorted(folder.glob("part-*.parquet"))]

    def run(self, data, rank: int = 0, world_size: int = 1):
        from data_pipeline.registries import load_plugins

        load_plugins()
        started = time.time()
        op = OPS[self.op_name]
        work = Path(self.work_dir)
        ctx = OpContext(self.stage_id, work, Path(self.cache_root), rank, world_size, self.recipe_name, self.workers)
        inputs = self.inputs()
        if op.kind == "map":
            if len(inputs) != world_size:
                raise PipelineError(f"stage {self.stage_id!r}: {len(inputs)} input shards for {world_size} tasks")
            rows = pq.read_table(inputs[rank]).to_pylist()
        elif op.kind == "global":
            rows = [r for f in inputs for r in pq.read_table(f).to_pylist()]
        else:
            rows = []
        with self.track_time():
            result: OpResult = op.fn(rows, self.params, ctx) if op.kind != "source" else op.fn(self.params, ctx)
        n_in = len(rows) if op.kind != "source" else len(result.kept) + len(result.dropped)
        self.stat_update("rows_in", value=n_in)
        self.stat_update("rows_out", value=len(result.kept))
        if op.kind == "map":
            outputs = [(rank, result.kept)]
        else:  # split in order into out_shards contiguous shards
            n = len(result.kept)
            bounds = [round(i * n / self.out_shards) for i in range(self.out_shards + 1)]
            outputs = [(i, result.kept[bounds[i]: bounds[i + 1]]) for i in range(self.out_shards)]
        for i, rows_i in outputs:
            write_parquet(to_table(rows_i), work / "data" / f"part-{i:05d}.parquet")
        dropped = [dict(r, drop_reason=why) for r, why in result.dropped]
        write_parquet(to_table(dropped, DROPPED_SCHEMA), work / "dropped" / f"part-{rank:05d}.parquet")
        reasons: dict[str, int] = {}
        for _, why in result.dropped:
            reasons[why] = reasons.get(why, 0) + 1
        atomic_write_json(work / "ranks" / f"{rank:05d}.json", {
            "rows_in": n_in, "rows_out": len(result.kept), "dropped": reasons, "extra": result.stats,
            "started": started, "finished": time.time()})
        return iter(())


class CommitStep(PipelineStep):
    """The last job of a stage on Slurm: merge the ranks' stats and move the
    stage into the cache (on the local and Ray executors the driver does this)."""

    name = "commonthoughts commit"
    type = "CommonThoughts"

    def __init__(self, stage_id: str, description: dict[str, Any], fingerprint: str, cache_root: str, ranks: int):
        super().__init__()
        self.stage_id, self.description, self.fingerprint = stage_id, description, fingerprint
        self.cache_root, self.ranks = cache_root, ranks

    def run(self, data, rank: int = 0, world_size: int = 1):
        cache = StageCache(Path(self.cache_root))
        if not cache.has(self.fingerprint):
            commit_stage(self.stage_id, self.description, self.fingerprint, cache, self.ranks)
        return iter(())


@dataclass
class StageRun:
    stage: PlannedStage
    stats: dict[str, Any]
    cached: bool
    seconds: float


@dataclass
class RunResult:
    stages: list[StageRun] = field(default_factory=list)

    @property
    def fingerprint(self) -> str:
        return self.stages[-1].stage.fingerprint

    def funnel(self) -> list[dict[str, Any]]:
        return [
            {"stage": r.stage.id, "op": r.stage.op.name, "rows_in": r.stats["rows_in"], "rows_out": r.stats["rows_out"],
             "dropped": r.stats["dropped"], "cached": r.cached, "seconds": round(r.seconds, 2),
             "fingerprint": r.stage.fingerprint, "extra": r.stats.get("extra", {})}
            for r in self.stages
        ]


def _merge_rank_stats(work: Path, ranks: int) -> dict[str, Any]:
    total = {"rows_in": 0, "rows_out": 0, "dropped": {}, "extra": {}}
    for r in range(ranks):
        s = json.loads((work / "ranks" / f"{r:05d}.json").read_text())
        for k in ("started", "finished"):
            if k in s:
                total[k] = (min if k == "started" else max)(total.get(k, s[k]), s[k])
        total["rows_in"] += s["rows_in"]
        total["rows_out"] += s["rows_out"]
        for k, v in s["dropped"].items():
            total["dropped"][k] = total["dropped"].get(k, 0) + v
        for k, v in s["extra"].items():
            total["extra"][k] = total["extra"].get(k, 0) + v
    total["dropped"] = dict(sorted(total["dropped"].items()))
    return total


def commit_stage(stage_id: str, description: dict[str, Any], fingerprint: str, cache: StageCache, ranks: int,
                 seconds: float | None = None, logs: Path | None = None) -> dict[str, Any]:
    """Merge a finished stage's rank stats and move it into the cache."""
    work = cache.work_dir(fingerprint)
    missing = [r for r in range(ranks) if not (work / "ranks" / f"{r:05d}.json").is_file()]
    if missing:
        where = f"; see {logs}" if logs else ""
        raise PipelineError(f"stage {stage_id!r}: ranks {missing} did not finish{where}")
    stats = _merge_rank_stats(work, ranks)
    started, finished = stats.pop("started", 0.0), stats.pop("finished", 0.0)
    if seconds is None:  # Slurm: from the first task's start to the last task's end
        seconds = finished - started
    stats.update(stage=description, seconds=round(seconds, 3))
    cache.commit(fingerprint, stats)
    return stats


def stage_ranks(stage: PlannedStage, input_shards: int) -> int:
    """Tasks of a stage's job: one per input shard for a map op, else one."""
    if stage.op.kind != "map":
        return 1
    if input_shards == 0:
        raise PipelineError(f"stage {stage.id!r}: its input stage has no shards")
    return input_shards


def stage_step(stage: PlannedStage, cache: StageCache, *, tasks: int, workers: int, recipe_name: str) -> StageStep:
    """The stage's datatrove step; `workers`: processes an op that runs its own may start."""
    root = cache.root.resolve()  # tasks may run in another folder, on another machine
    input_dir = str(root / "stages" / stage.input / "data") if stage.input else None
    return StageStep(stage.id, stage.op.name, stage.params, input_dir, str(root / "tmp" / stage.fingerprint), tasks,
                     str(root), recipe_name, workers)


def run_stage(stage: PlannedStage, cache: StageCache, *, tasks: int, workers: int, recipe_name: str,
              execution: ExecutionSpec | None = None) -> StageRun:
    """Run one stage on the local executor or, with `execution.executor == "ray"`,
    on the Ray executor (the caller has joined a Ray cluster), and commit it."""
    from data_pipeline.executors import stage_executor

    t0 = time.time()
    if cache.has(stage.fingerprint):
        return StageRun(stage, cache.stats(stage.fingerprint), True, time.time() - t0)
    execution = execution or ExecutionSpec()
    ranks = stage_ranks(stage, len(cache.shards(stage.input)) if stage.input else 0)
    work = cache.work_dir(stage.fingerprint)
    in_main = stage.op.runs_in_main_process(stage.params)
    kind = execution.executor
    if kind == "local":
        # an op with its own processes runs its ranks one at a time in this process, with `workers` processes
        step = stage_step(stage, cache, tasks=tasks, workers=workers if in_main else 1, recipe_name=recipe_name)
        concurrent = 1 if in_main else min(workers, ranks)
    elif kind == "ray":
        # each task is its own Ray actor: an op with its own processes uses the CPUs reserved for the task
        step = stage_step(stage, cache, tasks=tasks, workers=execution.cpus_per_task if in_main else 1,
                          recipe_name=recipe_name)
        concurrent = min(workers, ranks)
    else:
        raise PipelineError(f"run_stage runs the local and ray executors, not {kind!r} (see submit_slurm)")
    logs = work / "datatrove"
    executor = stage_executor(kind, [step], ranks=ranks, workers=concurrent, logging_dir=logs, execution=execution)
    try:
        executor.run()
    except Exception as e:  # the local executor re-raises the task's exception
        raise PipelineError(f"stage {stage.id!r} ({stage.op.name}) failed: {e}") from e
    failure = _first_task_error(logs, ranks, work)
    if failure:  # the Ray executor logs a failed task and goes on
        raise PipelineError(f"stage {stage.id!r} ({stage.op.name}) failed: {failure}")
    stats = commit_stage(stage.id, stage.describe(), stage.fingerprint, cache, ranks, time.time() - t0, logs / "logs")
    return StageRun(stage, stats, False, time.time() - t0)


def _first_task_error(logs: Path, ranks: int, work: Path) -> str | None:
    """The exception of the first unfinished task, from its log."""
    for r in range(ranks):
        if (work / "ranks" / f"{r:05d}.json").is_file():
            continue
        log = logs / "logs" / f"task_{r:05d}.log"
        text = log.read_text(errors="replace") if log.is_file() else ""
        trace = text.rsplit("Traceback (most recent call last):", 1)[1] if "Traceback" in text else ""
        errors = [ln for ln in trace.splitlines() if re.match(r"^[A-Za-z_][\w.]*: ", ln)]
        return f"task {r}: {errors[0] if errors else 'did not finish'} (log: {log})"
    return None


_LOG_LINE = re.compile(r"^(\(\w+ pid=\d+(, ip=[\d.]+)?\) )?(\[NODE \d+\] )?\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ \| (\w+)")


@contextlib.contextmanager
def datatrove_logs_to(log_path: Path):
    """Send datatrove's chatty per-task logs (pipeline dumps, stats blocks) to
    `log_path` and let only warnings, errors and tracebacks through to stderr.
    Works at the file-descriptor level so forked task processes are covered."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    # Every descriptor the pump uses is opened here, before the redirect and
    # the thread start, so the thread never races the restore below.
    out = open(os.dup(saved), "wb", buffering=0)
    log = open(log_path, "ab")
    read_fd, write_fd = os.pipe()
    src = open(read_fd, "rb")
    os.dup2(write_fd, 2)
    os.close(write_fd)

    def pump() -> None:
        show = True
        with src, log, out:
            for line in src:
                log.write(line)
                m = _LOG_LINE.match(line.decode(errors="replace"))
                if m:
                    show = m.group(4) in ("WARNING", "ERROR", "CRITICAL")
                if show:
                    out.write(line)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        thread.join(timeout=2)


def execution_of(recipe: Recipe, executor: str | None = None, **overrides: Any) -> ExecutionSpec:
    """The recipe's execution section with `executor` (and any other field) overridden,
    validated again (a RecipeError naming the recipe when the override does not fit)."""
    from pydantic import ValidationError

    ex = recipe.spec.data.execution
    update = {k: v for k, v in dict(overrides, executor=executor).items() if v is not None}
    if not update:
        return ex
    try:
        return ExecutionSpec.model_validate({**ex.model_dump(), **update})
    except ValidationError as e:
        msgs = "; ".join(re.sub(r"^Value error, ", "", err["msg"]) for err in e.errors())
        raise RecipeError.one(recipe.path, None, "data.execution", f"with {update}: {msgs}") from None


def _preflight(stages: list[PlannedStage], cache: StageCache) -> None:
    problems = []
    for stage in stages:
        if stage.op.preflight and not cache.has(stage.fingerprint):
            try:
                stage.op.preflight(stage.params)
            except ValueError as e:
                problems.append(f"stage {stage.id!r} ({stage.op.name}): {e}")
    if problems:
        raise PipelineError("cannot run on this machine:\n  " + "\n  ".join(problems))


def run_data(recipe: Recipe, cache: StageCache | None = None, *, tasks: int | None = None,
             workers: int | None = None, executor: str | None = None, echo=print) -> RunResult:
    """Run every data stage of a recipe, reusing cached stages, on the local or
    Ray executor (`executor` overrides the recipe's `data.execution.executor`;
    Slurm jobs are submitted by `submit_slurm`)."""
    from data_pipeline.executors import ray_cluster

    cache = cache or StageCache()
    ex = execution_of(recipe, executor)
    if ex.executor == "slurm":
        raise PipelineError("the slurm executor submits jobs and returns: use submit_slurm "
                            "(`python -m data_pipeline run RECIPE --executor slurm`)")
    tasks, workers = tasks or ex.tasks, workers or ex.workers
    stages = plan(recipe)
    _preflight(stages, cache)
    todo = [s for s in stages if not cache.has(s.fingerprint)]
    cluster = ray_cluster(ex.ray, echo) if ex.executor == "ray" and todo else contextlib.nullcontext()
    with cluster:
        return _run_stages(recipe, stages, cache, tasks, workers, ex, echo)


def _run_stages(recipe: Recipe, stages: list[PlannedStage], cache: StageCache, tasks: int, workers: int,
                ex: ExecutionSpec, echo) -> RunResult:
    result = RunResult()
    err = sys.stderr
    for i, stage in enumerate(stages, 1):
        tag = f"[{i}/{len(stages)}] {stage.id} ({stage.op.name}) {stage.fingerprint[:12]}"
        echo(f"{tag} ...", file=err, flush=True)
        quiet = contextlib.nullcontext() if cache.has(stage.fingerprint) else \
            datatrove_logs_to(cache.root / "logs" / f"{stage.fingerprint}.log")
        with quiet:
            run = run_stage(stage, cache, tasks=tasks, workers=workers, recipe_name=recipe.name, execution=ex)
        result.stages.append(run)
        how = "cached" if run.cached else f"{run.seconds:.1f}s"
        echo(f"{tag}: {run.stats['rows_in']} -> {run.stats['rows_out']} rows ({how})", file=err, flush=True)
        teacher = teacher_summary(run.stats.get("extra", {}))
        if teacher:
            echo(f"    teacher: {teacher}", file=err, flush=True)
    return result


def teacher_summary(extra: dict[str, Any]) -> str | None:
    """One line on a distill stage's requests, failures, tokens and cost."""
    if "requests" not in extra:
        return None
    parts = [f"{extra['requests']:.0f} requests ({extra.get('requests_cached', 0):.0f} cached, "
             f"{extra.get('requests_new', 0):.0f} new, {extra.get('attempts', 0):.0f} attempts)"]
    errors = {k.split("/", 1)[1]: v for k, v in extra.items() if k.startswith("errors/")}
    failed = {k.split("/", 1)[1]: v for k, v in extra.items() if k.startswith("failed/")}
    if errors:
        parts.append("retried errors " + ", ".join(f"{k}: {v:.0f}" for k, v in sorted(errors.items())))
    parts.append(f"{sum(failed.values()):.0f} failed" + (" (" + ", ".join(f"{k}: {v:.0f}" for k, v in sorted(failed.items())) + ")" if failed else ""))
    if extra.get("truncated"):
        parts.append(f"{extra['truncated']:.0f} truncated")
    parts.append(f"tokens {extra.get('prompt_tokens', 0):,.0f} prompt / {extra.get('completion_tokens', 0):,.0f} completion")
    if "cost" in extra:
        parts.append(f"cost {extra['cost']:.4f} (this run {extra.get('new_cost', 0):.4f})")
    return "; ".join(parts)


def funnel_table(result: RunResult) -> str:
    """The stage funnel as a Markdown table (printed at the end of each run and on the card)."""
    lines = ["| stage | op | rows in | rows out | dropped (by reason) | time |", "|---|---|---:|---:|---|---:|"]
    for f in result.funnel():
        dropped = ", ".join(f"{k}: {v}" for k, v in f["dropped"].items()) or "-"
        when = "cached" if f["cached"] else f"{f['seconds']:.1f}s"
        lines.append(f"| {f['stage']} | {f['op']} | {f['rows_in']} | {f['rows_out']} | {dropped} | {when} |")
    return "\n".join(lines)
