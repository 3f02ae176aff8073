"""The datatrove executors a stage's job runs on: local, Ray and Slurm.

`local` and `ray` run one stage after the other from this process (pipeline.py
`run_data`): the stage's job runs on datatrove's LocalPipelineExecutor or
RayPipelineExecutor, this process waits for it, then commits the stage to the
cache. `slurm` cannot wait: `submit_slurm` makes, for every stage not in the
cache, a SlurmPipelineExecutor array job for its tasks and a one-task job that
commits it, chained with datatrove's `depends=` (each job starts after the one
before it succeeded), and submits the chain; a task lists its input shards
when it starts, so the number of tasks of each stage is planned up front from
the shard counts (a map stage keeps its input's, a global or source stage
writes `tasks`). `dry_run=True` writes the same sbatch scripts and a
`submit.sh` that would submit them in order, and calls no `sbatch`.

Every task reads and writes the stage cache, so on a cluster the cache (and
`slurm.logging_dir`) must be on a filesystem that every node sees.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from datatrove.executor import SlurmPipelineExecutor

from data_pipeline.cache import StageCache
from data_pipeline.errors import PipelineError
from data_pipeline.recipe import ExecutionSpec, RayExecution, Recipe

COMMIT_TIME = "00:30:00"  # the commit job reads the ranks' stats and renames one folder


def stage_executor(kind: str, pipeline: list, *, ranks: int, workers: int, logging_dir: Path,
                   execution: ExecutionSpec, depends=None, job_name: str | None = None,
                   cpus_per_task: int | None = None, time_limit: str | None = None):
    """A datatrove executor for one stage's job (`ranks` tasks, `workers` at a time)."""
    cpus = cpus_per_task or execution.cpus_per_task
    if kind == "local":
        from datatrove.executor import LocalPipelineExecutor

        return LocalPipelineExecutor(pipeline=pipeline, tasks=ranks, workers=workers, logging_dir=str(logging_dir),
                                     skip_completed=True, start_method="fork")
    if kind == "ray":
        from datatrove.executor import RayPipelineExecutor
        from datatrove.utils.logging import logger

        # datatrove warns on every job that a local logging folder must be shared by
        # the nodes; the docs say so once (the cache is on that folder too).
        logger.disable("datatrove.executor.ray")
        try:
            return RayPipelineExecutor(pipeline=pipeline, tasks=ranks, workers=workers, logging_dir=str(logging_dir),
                                       skip_completed=True, cpus_per_task=cpus,
                                       mem_per_cpu_gb=execution.mem_per_cpu_gb)
        finally:
            logger.enable("datatrove.executor.ray")
    if kind == "slurm":
        slurm = execution.slurm
        if slurm is None:
            raise PipelineError("the slurm executor needs a data.execution.slurm section (at least `partition`)")
        sbatch_args: dict[str, Any] = dict(slurm.sbatch_args)
        if slurm.account:
            sbatch_args.setdefault("account", slurm.account)
        mem = execution.mem_per_cpu_gb
        if not float(mem).is_integer():  # datatrove writes `{mem}G`; Slurm wants whole units
            sbatch_args["mem-per-cpu"] = f"{round(mem * 1024)}M"
        return StageSlurmExecutor(
            pipeline=pipeline, tasks=ranks, workers=workers, time=time_limit or slurm.time,
            partition=slurm.partition, qos=slurm.qos, cpus_per_task=cpus, mem_per_cpu_gb=int(mem) or 1,
            job_name=job_name or "commonthoughts", env_command=slurm_env_command(execution),
            sbatch_args=sbatch_args, max_array_size=slurm.max_array_size, depends=depends,
            logging_dir=str(logging_dir), skip_completed=True,
        )
    raise PipelineError(f"unknown executor {kind!r}; use local, ray or slurm")


class StageSlurmExecutor(SlurmPipelineExecutor):
    """datatrove's SlurmPipelineExecutor without its extra stats-summary job per
    job: a stage's commit job writes the stage's stats (rows, drops, time)."""

    def launch_merge_stats(self):
        pass


def slurm_env_command(execution: ExecutionSpec) -> str | None:
    """What a Slurm task runs before the stage: the recipe's `env_command`, or
    the activation of its `venv`, or of the venv this process runs in."""
    slurm = execution.slurm
    if slurm and slurm.env_command:
        return slurm.env_command
    venv = slurm.venv if slurm and slurm.venv else (sys.prefix if sys.prefix != sys.base_prefix else None)
    return f"source {shlex.quote(str(Path(venv) / 'bin' / 'activate'))}" if venv else None


# --------------------------------------------------------------------------- ray

@contextlib.contextmanager
def ray_cluster(spec: RayExecution, echo=print) -> Iterator[None]:
    """Join the Ray cluster the recipe names; if this process has joined one
    already (ray.init), use that; else start a local one for the run."""
    try:
        import ray
    except ImportError:
        raise PipelineError("the ray executor needs Ray: pip install 'commonthoughts[ray]'") from None
    if ray.is_initialized():
        yield
        return
    where = spec.address or "a local cluster"
    echo(f"ray: joining {where}", file=sys.stderr, flush=True)
    try:
        ray.init(address=spec.address, include_dashboard=False, log_to_driver=spec.address is not None,
                 logging_level=logging.WARNING)
    except (Exception, SystemExit) as e:  # no cluster there (Ray exits), a version mismatch, ...
        ray.shutdown()
        raise PipelineError(f"ray: could not join {where}: {type(e).__name__} {e}") from None
    try:
        yield
    finally:
        ray.shutdown()


# --------------------------------------------------------------------------- slurm

@dataclass
class SlurmJob:
    name: str  # the #SBATCH --job-name
    kind: str  # "tasks" (the stage's array job) or "commit"
    script: Path  # the sbatch script as submitted
    args: list[str]  # sbatch options on the command line
    job_id: str  # the Slurm job id, or DRYRUN<n> in a dry run
    stage: str | None = None


@dataclass
class SlurmSubmission:
    folder: Path  # scripts, submit.sh, jobs.json
    jobs: list[SlurmJob] = field(default_factory=list)
    dry_run: bool = False
    cached: list[str] = field(default_factory=list)  # stage ids already in the cache (no job)

    @property
    def submit_script(self) -> Path:
        return self.folder / "submit.sh"


def planned_ranks(stages: list, cache: StageCache, tasks: int) -> dict[str, int]:
    """Tasks of every stage not in the cache, before any has run: a map stage
    runs one task per input shard, whose count is its input's (in the cache, or
    `tasks` from a global or source stage, or carried through map stages)."""
    from data_pipeline.pipeline import stage_ranks

    shards: dict[str, int] = {}
    ranks: dict[str, int] = {}
    for st in stages:
        if cache.has(st.fingerprint):
            shards[st.fingerprint] = len(cache.shards(st.fingerprint))
            continue
        ranks[st.fingerprint] = stage_ranks(st, shards[st.input] if st.input else 0)
        shards[st.fingerprint] = ranks[st.fingerprint] if st.op.kind == "map" else tasks
    return ranks


_DRY = "DRYRUN"


@contextlib.contextmanager
def _sbatch_recorder(dry_run: bool) -> Iterator[list[tuple[str, str, list[str]]]]:
    """Record every job datatrove's SlurmPipelineExecutor submits (its own
    launch_job builds the script, pickles the executor, computes the
    dependencies); in a dry run, answer with a placeholder id instead of
    calling sbatch."""
    from datatrove.executor import slurm as dt_slurm

    calls: list[tuple[str, str, list[str]]] = []
    real = dt_slurm.launch_slurm_job

    def launch(contents: str, job_id_retriever, *args: str) -> str:
        job_id = f"{_DRY}{len(calls) + 1}" if dry_run else str(real(contents, job_id_retriever, *args))
        calls.append((job_id, contents, list(args)))
        return job_id

    dt_slurm.launch_slurm_job = launch
    try:
        yield calls
    finally:
        dt_slurm.launch_slurm_job = real


def submit_slurm(recipe: Recipe, cache: StageCache | None = None, *, tasks: int | None = None,
                 workers: int | None = None, dry_run: bool = False, folder: Path | None = None,
                 echo=print) -> SlurmSubmission:
    """Submit the recipe's data stages as chained Slurm jobs (see the module doc)."""
    from data_pipeline.pipeline import CommitStep, _preflight, execution_of, plan, stage_step

    cache = cache or StageCache()
    root = cache.root.resolve()
    cache = StageCache(root)
    ex = execution_of(recipe, "slurm")
    assert ex.slurm is not None
    tasks, workers = tasks or ex.tasks, workers or ex.workers
    stages = plan(recipe)
    _preflight(stages, cache)
    ranks = planned_ranks(stages, cache, tasks)
    jobs_root = Path(ex.slurm.logging_dir).resolve() if ex.slurm.logging_dir else root / "jobs"
    prefix = ex.slurm.job_name or f"ct-{recipe.name}"
    if folder is None:
        stem = jobs_root / "runs" / f"{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}{'-dry-run' if dry_run else ''}"
        folder, n = stem, 1
        while folder.exists():
            n += 1
            folder = stem.with_name(f"{stem.name}-{n}")
    sub = SlurmSubmission(folder.resolve(), dry_run=dry_run,
                          cached=[s.id for s in stages if s.fingerprint not in ranks])
    last = None
    names: dict[str, str] = {}
    for i, stage in enumerate(stages, 1):
        if stage.fingerprint not in ranks:
            continue
        n = ranks[stage.fingerprint]
        in_main = stage.op.runs_in_main_process(stage.params)
        step = stage_step(stage, cache, tasks=tasks, workers=ex.cpus_per_task if in_main else 1,
                          recipe_name=recipe.name)
        jobs = jobs_root / stage.fingerprint
        name = f"{prefix}-{i:02d}-{stage.id}"
        run = stage_executor("slurm", [step], ranks=n, workers=min(workers, n), logging_dir=jobs / "tasks",
                             execution=ex, depends=last, job_name=name)
        commit = CommitStep(stage.id, stage.describe(), stage.fingerprint, str(root), n)
        # the commit job writes its logs outside the stage's work folder, which it renames
        last = stage_executor("slurm", [commit], ranks=1, workers=1, logging_dir=jobs / "commit", execution=ex,
                              depends=run, job_name=f"{name}-commit", cpus_per_task=1, time_limit=COMMIT_TIME)
        names[name], names[f"{name}-commit"] = stage.id, stage.id
    sub.folder.mkdir(parents=True, exist_ok=True)
    if last is None:
        echo("every stage is in the cache: nothing to submit", file=sys.stderr, flush=True)
        _write_record(sub)
        return sub
    from data_pipeline.pipeline import datatrove_logs_to

    with datatrove_logs_to(sub.folder / "submit.log"), _sbatch_recorder(dry_run) as calls:
        last.run()  # launches the chain from the first job (datatrove's depends=)
    for n_job, (job_id, contents, args) in enumerate(calls, 1):
        name = re.search(r"^#SBATCH --job-name=(.+)$", contents, re.M).group(1)
        kind = "commit" if name.endswith("-commit") else "tasks"
        script = sub.folder / f"{n_job:02d}-{name}.sbatch"
        script.write_text(contents)
        sub.jobs.append(SlurmJob(name, kind, script, args, job_id, names.get(name)))
    _write_record(sub)
    return sub


def _write_record(sub: SlurmSubmission) -> None:
    lines = ["#!/bin/bash",
             "# The recipe's data stages as chained Slurm jobs, in submission order"
             + (" (a dry run: nothing was submitted)." if sub.dry_run else " (submitted: this is the record;"
                " running it submits the chain again)."),
             "# Written by `python -m data_pipeline run RECIPE --executor slurm`; see docs/scale-out.md.",
             "set -euo pipefail", f"cd {shlex.quote(str(sub.folder))}"]
    var = {j.job_id: f"J{i}" for i, j in enumerate(sub.jobs, 1)}

    def ids_to_vars(arg: str) -> str:  # --dependency=afterok:<id>[,afterany:<id>] -> the shell variables
        if not arg.startswith("--dependency="):
            return arg
        return re.sub(r"(?<=:)([^:,]+)", lambda m: "${" + var[m.group(1)] + "}" if m.group(1) in var else m.group(1),
                      arg)

    for i, j in enumerate(sub.jobs, 1):
        args = [ids_to_vars(a) for a in j.args]
        quoted = " ".join(f'"{a}"' if "${" in a else shlex.quote(a) for a in args)
        lines.append(f"J{i}=$(sbatch --parsable {quoted} {shlex.quote(j.script.name)} | cut -d';' -f1)"
                     f"  # {j.kind}" + (f" of stage {j.stage}" if j.stage else ""))
    lines.append('echo "submitted ' + " ".join(f"${{J{i}}}" for i in range(1, len(sub.jobs) + 1)) + '"')
    sub.submit_script.write_text("\n".join(lines) + "\n")
    sub.submit_script.chmod(0o755)
    (sub.folder / "jobs.json").write_text(json.dumps(
        {"dry_run": sub.dry_run, "cached_stages": sub.cached,
         "jobs": [{"name": j.name, "kind": j.kind, "stage": j.stage, "script": j.script.name, "args": j.args,
                   "job_id": j.job_id} for j in sub.jobs]}, indent=2) + "\n")
