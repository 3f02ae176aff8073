"""Scale-out (issue 8): the data stages on datatrove's Ray and Slurm executors
give the local executor's rows; the Slurm job scripts (a dry run: no Slurm
here) and their dependency chain; the multi-node SFT launch script."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
from pathlib import Path

import dill
import pytest
import yaml

from data_pipeline.cache import StageCache
from data_pipeline.cli import main as cli_main
from data_pipeline.errors import PipelineError, RecipeError
from data_pipeline.executors import StageSlurmExecutor, submit_slurm
from data_pipeline.pipeline import CommitStep, StageStep, execution_of, plan, run_data
from data_pipeline.recipe import load_recipe
from data_pipeline.registries import load_plugins

ROOT = Path(__file__).resolve().parents[1]
SMALL = ROOT / "tests/recipes/good/small.yaml"
NANO = ROOT / "recipes/nano/base.yaml"
LAUNCH_SCRIPT = ROOT / "sft/slurm/train.sbatch"

load_plugins()


def _quiet(*a, **k) -> None:
    pass


def _with_execution(src: Path, folder: Path, execution: dict, name: str | None = None) -> Path:
    doc = yaml.safe_load(src.read_text())
    doc["data"]["execution"] = execution
    (folder / "recipes").mkdir(parents=True, exist_ok=True)
    path = folder / "recipes" / f"{name or src.stem}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _fake_bin(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def _assert_same_rows(a: StageCache, b: StageCache, result) -> None:
    for run in result.stages:
        fp = run.stage.fingerprint
        assert not run.cached, run.stage.id
        assert len(a.shards(fp)) == len(b.shards(fp)), run.stage.id
        assert a.read(fp).to_pylist() == b.read(fp).to_pylist(), run.stage.id
        if a.shards(fp, "dropped"):
            assert a.read(fp, "dropped").to_pylist() == b.read(fp, "dropped").to_pylist(), run.stage.id
        sa, sb = a.stats(fp), b.stats(fp)
        assert (sa["rows_in"], sa["rows_out"], sa["dropped"]) == (sb["rows_in"], sb["rows_out"], sb["dropped"])


# --------------------------------------------------------------------------- the recipe section

def test_execution_is_checked_and_is_not_in_any_fingerprint(tmp_path: Path):
    base = load_recipe(SMALL)
    other = load_recipe(_with_execution(SMALL, tmp_path, {
        "executor": "slurm", "tasks": 7, "workers": 3, "cpus_per_task": 4, "mem_per_cpu_gb": 0.5,
        "ray": {"address": "auto"},
        "slurm": {"partition": "cpu", "time": "1-00:00:00", "account": "a", "sbatch_args": {"constraint": "x"}}}))
    assert [s.fingerprint for s in plan(base)] == [s.fingerprint for s in plan(other)]
    assert other.spec.data.execution.slurm.time == "1-00:00:00"

    bad = {"no_slurm_section": ({"executor": "slurm"}, "needs a `slurm` section"),
           "unknown_executor": ({"executor": "dask"}, "data.execution.executor"),
           "bad_time": ({"slurm": {"partition": "p", "time": "soon"}}, "data.execution.slurm.time"),
           "two_envs": ({"slurm": {"partition": "p", "env_command": "x", "venv": "/v"}}, "not both")}
    for name, (execution, message) in bad.items():
        with pytest.raises(RecipeError) as e:
            load_recipe(_with_execution(SMALL, tmp_path, execution, name))
        assert message in str(e.value), name
    # the --executor override is checked against the section too
    with pytest.raises(RecipeError, match="needs a `slurm` section"):
        execution_of(base, "slurm")
    assert execution_of(base, "ray").executor == "ray"


def test_dry_run_needs_the_slurm_executor(tmp_path: Path):
    assert cli_main(["run", str(SMALL), "--dry-run", "--cache", str(tmp_path / "c")]) == 2
    assert not (tmp_path / "c").exists()


# --------------------------------------------------------------------------- ray

@pytest.fixture(scope="module")
def ray_local():
    """A local Ray cluster in this process, as `ray.init` starts it."""
    if os.environ.get("CI"):
        import ray  # CI installs the dev extra: this test must run there, not skip
    else:
        ray = pytest.importorskip("ray")
    saved = os.environ.get("RAY_memory_monitor_refresh_ms")
    # the shared test machines run other work: Ray must not kill our tasks for others' memory use
    os.environ["RAY_memory_monitor_refresh_ms"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
    if saved is None:
        os.environ.pop("RAY_memory_monitor_refresh_ms", None)
    else:
        os.environ["RAY_memory_monitor_refresh_ms"] = saved


def test_ray_executor_gives_the_local_executors_rows(tmp_path: Path, ray_local):
    recipe = load_recipe(_with_execution(SMALL, tmp_path, {"tasks": 2, "workers": 2, "mem_per_cpu_gb": 0.25}))
    local, on_ray = StageCache(tmp_path / "local"), StageCache(tmp_path / "ray")
    a = run_data(recipe, local, echo=_quiet)
    b = run_data(recipe, on_ray, executor="ray", echo=_quiet)
    assert [s.stage.fingerprint for s in a.stages] == [s.stage.fingerprint for s in b.stages]
    _assert_same_rows(local, on_ray, b)
    # each stage's tasks ran as Ray tasks (datatrove's Ray executor), not in this process
    for run in b.stages:
        job = on_ray.final_dir(run.stage.fingerprint) / "datatrove"
        assert "ray_remote_kwargs" in json.loads((job / "executor.json").read_text()), run.stage.id
        assert "datatrove.executor.ray:_run_for_rank" in (job / "logs" / "task_00000.log").read_text()
    assert ray_local.is_initialized()  # run_data leaves a cluster it did not start running


def test_ray_executor_reports_a_failed_task(tmp_path: Path, ray_local):
    doc = yaml.safe_load(_with_execution(SMALL, tmp_path, {"tasks": 2, "mem_per_cpu_gb": 0.25}).read_text())
    doc["data"]["stages"] = {"filter": doc["data"]["stages"]["filter"]}
    path = tmp_path / "recipes" / "two-stages.yaml"
    path.write_text(yaml.safe_dump(doc))
    recipe = load_recipe(path)
    cache = StageCache(tmp_path / "cache")
    mix, filt = plan(recipe)
    run_data(recipe, cache, echo=_quiet)
    # a damaged input shard and the filter stage to run again: its task 0 fails on Ray
    cache.shards(mix.fingerprint)[0].write_bytes(b"not parquet")
    shutil.rmtree(cache.final_dir(filt.fingerprint))
    with pytest.raises(PipelineError, match=r"stage 'filter' \(filter\) failed: task 0: \S*ArrowInvalid: .*Parquet"):
        run_data(recipe, cache, executor="ray", echo=_quiet)
    assert not cache.has(filt.fingerprint)


# --------------------------------------------------------------------------- slurm

NANO_SLURM = {"tasks": 4, "workers": 3, "cpus_per_task": 2, "mem_per_cpu_gb": 3,
              "slurm": {"partition": "cpu-long", "time": "02:00:00", "qos": "high", "account": "ct",
                        "venv": "/shared/ct/.venv", "sbatch_args": {"constraint": "avx2"}}}


def _sbatch(script: str) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(.*))?$", script, re.M))


def test_slurm_dry_run_writes_the_nano_recipes_chained_job_scripts_and_submits_nothing(tmp_path: Path,
                                                                                         monkeypatch):
    called = tmp_path / "sbatch-was-called"
    fake = tmp_path / "bin"
    _fake_bin(fake, "sbatch", f'echo "$@" >> {called}\nexit 1\n')
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    path = _with_execution(NANO, tmp_path, NANO_SLURM, "nano-base")
    cache = tmp_path / "cache"
    assert cli_main(["run", str(path), "--executor", "slurm", "--dry-run", "--cache", str(cache)]) == 0
    assert not called.exists(), "a dry run called sbatch"
    assert not (cache / "stages").exists()  # nothing ran

    stages = plan(load_recipe(path))
    [run] = list((cache / "jobs" / "runs").iterdir())
    record = json.loads((run / "jobs.json").read_text())
    jobs = record["jobs"]
    assert record["dry_run"] and len(jobs) == 2 * len(stages)
    for k, job in enumerate(jobs):
        stage = stages[k // 2]
        script = (run / job["script"]).read_text()
        opts = _sbatch(script)
        # each job starts after the one before it succeeded: tasks of a stage, its commit, the next stage, ...
        deps = [a for a in job["args"] if a.startswith("--dependency=")]
        assert deps == ([f"--dependency=afterok:{jobs[k - 1]['job_id']}"] if k else []), job["name"]
        assert job["stage"] == stage.id
        assert opts["partition"] == "cpu-long" and opts["qos"] == "high" and opts["account"] == "ct"
        assert opts["constraint"] == "avx2" and opts["mem-per-cpu"] == "3G" and "requeue" in opts
        assert "source /shared/ct/.venv/bin/activate" in script
        pik = re.search(r"^srun .*-n 1 launch_pickled_pipeline (\S+)$", script, re.M).group(1)
        with open(pik, "rb") as f:
            executor = dill.load(f)
        assert isinstance(executor, StageSlurmExecutor)
        step = executor.pipeline[0]
        if k % 2 == 0:  # the stage's array job: one task per input shard of a map stage, else one
            ranks = 4 if stage.op.kind == "map" else 1
            assert job["kind"] == "tasks" and opts["job-name"] == f"ct-nano-base-{k // 2 + 1:02d}-{stage.id}"
            assert opts["array"] == f"0-{ranks - 1}%{min(3, ranks)}"
            assert opts["cpus-per-task"] == "2" and opts["time"] == "02:00:00"
            assert isinstance(step, StageStep) and step.stage_id == stage.id and executor.tasks == ranks
            assert step.input_dir == (str(cache / "stages" / stage.input / "data") if stage.input else None)
            assert step.out_shards == 4
            # an op that runs its own processes (verify) gets the task's CPUs for them
            assert step.workers == (2 if stage.op.runs_in_main_process(stage.params) else 1)
        else:  # the stage's commit: one small task
            assert job["kind"] == "commit" and opts["job-name"] == f"ct-nano-base-{k // 2 + 1:02d}-{stage.id}-commit"
            assert opts["array"] == "0-0%1" and opts["cpus-per-task"] == "1" and opts["time"] == "00:30:00"
            assert isinstance(step, CommitStep) and step.fingerprint == stage.fingerprint
            assert step.ranks == (4 if stage.op.kind == "map" else 1)
    # submit.sh submits the same chain in the same order
    submit = (run / "submit.sh").read_text()
    assert subprocess.run(["bash", "-n", str(run / "submit.sh")]).returncode == 0
    lines = [ln for ln in submit.splitlines() if ln.startswith("J")]
    assert len(lines) == len(jobs)
    for k, (line, job) in enumerate(zip(lines, jobs), 1):
        assert line.startswith(f"J{k}=$(sbatch --parsable ") and f" {job['script']} " in line
        assert (f'"--dependency=afterok:${{J{k - 1}}}"' in line) == (k > 1)


def test_slurm_jobs_run_in_order_as_slurm_runs_them_give_the_local_rows(tmp_path: Path, monkeypatch):
    """Run each generated job's pickled executor the way its script does on a
    node (`launch_pickled_pipeline` with SLURM_ARRAY_TASK_ID per array task),
    in submission order: the cache then holds the local executor's rows, and
    the next `run --executor slurm` submits nothing and publishes."""
    fake = tmp_path / "bin"
    _fake_bin(fake, "scontrol", '[ "$1 $2" = "show hostnames" ] && echo "$3"\n')
    _fake_bin(fake, "sbatch", f'echo "$@" >> {tmp_path / "sbatch-was-called"}\nexit 1\n')
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_NODELIST", "node1")
    path = _with_execution(SMALL, tmp_path, {"tasks": 2, "workers": 2, "slurm": {"partition": "p"}})
    recipe = load_recipe(path)
    cache = StageCache(tmp_path / "slurm")
    sub = submit_slurm(recipe, cache, dry_run=True, echo=_quiet)
    handler = signal.getsignal(signal.SIGUSR1)  # datatrove installs its requeue handler in a task

    def run_job(job) -> None:
        script = job.script.read_text()
        pik = re.search(r"launch_pickled_pipeline (\S+)", script).group(1)
        first, last = map(int, re.search(r"^#SBATCH --array=(\d+)-(\d+)", script, re.M).groups())
        for i in range(first, last + 1):
            monkeypatch.setenv("SLURM_ARRAY_TASK_ID", str(i))
            with open(pik, "rb") as f:
                dill.load(f).run()

    try:
        # out of order (the filter stage before its input is committed): the task refuses
        with pytest.raises(PipelineError, match="not in the cache"):
            run_job(sub.jobs[2])
        for job in sub.jobs:
            run_job(job)
    finally:
        signal.signal(signal.SIGUSR1, handler)
    local = StageCache(tmp_path / "local")
    result = run_data(recipe, local, echo=_quiet)
    _assert_same_rows(local, cache, result)
    assert cache.stats(result.fingerprint)["seconds"] >= 0
    # every stage is in the cache now: `run --executor slurm` submits nothing and publishes
    assert cli_main(["run", str(path), "--executor", "slurm", "--cache", str(cache.root),
                     "--registry", str(tmp_path / "registry")]) == 0
    assert not (tmp_path / "sbatch-was-called").exists()
    assert list((tmp_path / "registry" / "datasets").glob("*/small"))


def test_slurm_submission_runs_sbatch_once_per_job_each_after_the_last(tmp_path: Path, monkeypatch):
    calls = tmp_path / "sbatch-calls"
    fake = tmp_path / "bin"
    # a stand-in sbatch: records its arguments and the script's job name, answers like sbatch
    _fake_bin(fake, "sbatch", f"""n=$(( $(cat {calls} 2>/dev/null | wc -l) + 1000 ))
name=$(grep -m1 '^#SBATCH --job-name=' "${{@: -1}}" | cut -d= -f2)
echo "$n $name ${{*:1:$#-1}}" >> {calls}
echo "Submitted batch job $n"
""")
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    recipe = load_recipe(_with_execution(SMALL, tmp_path, {"tasks": 2, "slurm": {"partition": "p"}}))
    cache = StageCache(tmp_path / "cache")
    sub = submit_slurm(recipe, cache, echo=_quiet)
    recorded = [ln.split(" ", 2) for ln in calls.read_text().splitlines()]
    stages = plan(recipe)
    assert len(recorded) == len(sub.jobs) == 2 * len(stages)
    for k, ((job_id, name, args), job) in enumerate(zip(recorded, sub.jobs)):
        assert job.job_id == job_id and job.name == name
        assert name == f"ct-small-{k // 2 + 1:02d}-{stages[k // 2].id}" + ("-commit" if k % 2 else "")
        assert ("--dependency=afterok:" + recorded[k - 1][0] in args.split()) == (k > 0)
    assert not sub.dry_run and (sub.folder / "jobs.json").is_file()
    # submitting again while they are queued starts the chain again (datatrove's completion
    # markers and the cache skip what has finished by then); with the cache full, nothing
    assert not (cache.root / "stages").exists()


# --------------------------------------------------------------------------- multi-node SFT

def _slurm_env(tmp_path: Path) -> dict[str, str]:
    fake = tmp_path / "bin"
    _fake_bin(fake, "scontrol", '[ "$1 $2" = "show hostnames" ] || exit 2\n'
                                '[ "$3" = "gpu-[07-08]" ] && printf "gpu-07\\ngpu-08\\n"\n')
    # srun: run the command once per node, with that node's SLURM_NODEID, as srun does
    _fake_bin(fake, "srun", 'echo "srun $*" >&2\nn=1\n'
                            'while [ $# -gt 0 ]; do case "$1" in --nodes=*) n=${1#--nodes=}; shift;; -*) shift;; '
                            '*) break;; esac; done\n'
                            'for ((i = 0; i < n; i++)); do SLURM_NODEID=$i "$@"; done\n')
    python = _fake_bin(fake, "python-echo", 'echo "python $*"\n')
    return {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "gpu-[07-08]",
            "SLURM_NNODES": "2", "SLURM_JOB_NUM_NODES": "2", "GPUS_PER_NODE": "4", "MAIN_PORT": "29533",
            "PYTHON": str(python)}


def test_sft_slurm_script_launches_accelerate_once_per_node_with_its_rank(tmp_path: Path):
    assert subprocess.run(["bash", "-n", str(LAUNCH_SCRIPT)]).returncode == 0
    env = dict(_slurm_env(tmp_path), CT_SFT_PRINT_LAUNCH="1")
    out = subprocess.run(["bash", str(LAUNCH_SCRIPT), "recipes/x.yaml"], env=env, capture_output=True, text=True,
                         check=True)
    [launch] = out.stdout.splitlines()
    # what `sft train` then runs, with its accelerate config and job file filled in
    cmd = launch.replace("{config}", "/r/accelerate/zero3.yaml").replace("{job}", "/c/sft/abc/job.json")
    nodes = subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, text=True, check=True)
    assert "srun --nodes=2 --ntasks-per-node=1" in nodes.stderr
    lines = nodes.stdout.splitlines()
    assert len(lines) == 2
    from accelerate.commands.launch import launch_command_parser

    for rank, line in enumerate(lines):
        argv = line.split()
        assert argv[:3] == ["python", "-m", "accelerate.commands.launch"]
        args = launch_command_parser().parse_args(argv[3:])  # accelerate's own parser takes them
        assert (args.config_file, args.num_machines, args.num_processes, args.machine_rank) == \
            ("/r/accelerate/zero3.yaml", 2, 8, rank)
        assert (args.main_process_ip, args.main_process_port) == ("gpu-07", 29533)
        assert args.module and [args.training_script, *args.training_script_args] == \
            ["sft", "worker", "/c/sft/abc/job.json"]
    # outside an allocation it refuses to start
    bare = {k: v for k, v in env.items() if not k.startswith("SLURM_")}
    refused = subprocess.run(["bash", str(LAUNCH_SCRIPT), "recipes/x.yaml"], env=bare, capture_output=True, text=True)
    assert refused.returncode != 0 and "sbatch" in refused.stderr


def test_sft_slurm_script_hands_its_launch_to_sft_train(tmp_path: Path):
    """The script ends by running `sft train` with `--launcher` set to the per-node srun;
    `sft train` fills in the accelerate config (ddp.yaml when the recipe names none) and
    the job file."""
    import sft.cli as cli

    argv_printer = _fake_bin(tmp_path / "bin", "python-argv", 'printf "%s\\n" "$@"\n')  # the final exec's argv
    env = dict(_slurm_env(tmp_path), PYTHON=str(argv_printer))
    out = subprocess.run(["bash", str(LAUNCH_SCRIPT), "recipes/x.yaml", "--if-missing"], env=env,
                         capture_output=True, text=True, check=True)
    argv = out.stdout.splitlines()
    assert argv[:4] == ["-m", "sft", "train", "recipes/x.yaml"] and argv[-1] == "--if-missing"
    template = argv[argv.index("--launcher") + 1]
    assert template.startswith("srun --nodes=2 ") and "{config}" in template and "{job}" in template
    cmd = cli.custom_launch_command(template, Path("/r/zero3.yaml"), Path("/c/job.json"))
    assert cmd[:2] == ["bash", "-c"] and "--config_file /r/zero3.yaml" in cmd[2] and "sft worker /c/job.json" in cmd[2]
    with pytest.raises(Exception, match="shell quoting"):
        cli.custom_launch_command(template, Path("/r/zero3.yaml"), Path("/c/my job.json"))
    with pytest.raises(Exception, match="no {job} placeholder"):
        cli.custom_launch_command("srun accelerate launch --config_file {config}", Path("/r/a.yaml"), Path("/c/j"))
