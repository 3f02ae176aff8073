"""`python -m sft train RECIPE`: train the recipe's student on its dataset.

The dataset is taken from the registry at the recipe's fingerprint; when the
registry does not hold it, the data stages run first (their cache makes that
cheap when only a later stage changed). The trained model is published to the
registry under the recipe's model repo, tagged `v<version>` and with the model
fingerprint (dataset fingerprint + sft section + base model).

On one device training runs in this process. With `sft.accelerate` (an
accelerate config file, relative to the recipe that sets it), or on a machine
with several GPUs, this process does the once-only work (build and publish the
dataset, make the base model, publish the result) and `accelerate launch` runs
`python -m sft worker JOB` on every rank for the training itself.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from data_pipeline.cache import StageCache
from data_pipeline.errors import RecipeError, run_command
from data_pipeline.fingerprint import base_model_identity, model_fingerprint
from data_pipeline.hub import open_registry
from data_pipeline.registry import LocalRegistry, fp_tag


def dataset_mismatch(recipe, card: dict) -> str | None:
    """None when a dataset card's fingerprint is the recipe's; otherwise which
    stage differs first (or that the stage lists differ), for the error."""
    from data_pipeline.pipeline import plan

    stages = plan(recipe)
    ours = stages[-1].fingerprint
    info = card.get("commonthoughts") or {}
    theirs = info.get("fingerprint")
    if theirs == ours:
        return None
    if not theirs:
        return "its card has no CommonThoughts fingerprint (not made by this recipe engine?)"
    published = info.get("stages") or []
    for i, st in enumerate(stages):
        if i >= len(published):
            return f"the recipe has more stages: {st.id!r} ({st.op.name}) onwards are not in the dataset"
        pub = published[i]
        if pub.get("fingerprint") != st.fingerprint:
            why = []
            if pub.get("op") != st.op.name:
                why.append(f"op {pub.get('op')!r} there, {st.op.name!r} here")
            elif str(pub.get("op_version")) != str(st.op.version):
                why.append(f"op version {pub.get('op_version')} there, {st.op.version} here")
            else:
                why.append("its parameters or its input differ" if i else "its sources or their revisions differ")
            return (f"stage {i + 1} {st.id!r} ({st.op.name}) differs first: {'; '.join(why)} "
                    f"(fingerprint {str(pub.get('fingerprint'))[:12]} there, {st.fingerprint[:12]} here)")
    return f"the dataset has more stages than the recipe ({len(published)} vs {len(stages)})"


def ensure_dataset(recipe, cache: StageCache, registry: LocalRegistry) -> tuple[str, str, str]:
    """(repo, revision, fingerprint) of the recipe's dataset: the pinned
    `sft.dataset` (its card checked against the recipe), else the registry's
    revision at the recipe's fingerprint, building it if the registry lacks it."""
    from data_pipeline.errors import PipelineError
    from data_pipeline.pipeline import funnel_table, plan, run_data
    from data_pipeline.publish import publish_dataset

    fp = plan(recipe)[-1].fingerprint
    pinned = recipe.spec.sft.dataset
    if pinned is not None:
        rev = registry.resolve("datasets", pinned.repo, pinned.revision)
        if rev is None:
            raise PipelineError(f"datasets/{pinned.repo} has no revision {pinned.revision!r} in {registry.root}")
        problem = dataset_mismatch(recipe, registry.card("datasets", pinned.repo, rev))
        if problem:
            raise PipelineError(f"datasets/{pinned.repo} @ {rev[:12]} was not made by this recipe: {problem}")
        return pinned.repo, rev, fp
    repo = recipe.dataset_repo
    rev = registry.find_fingerprint("datasets", repo, fp)
    if rev is None:
        print(f"datasets/{repo} has no revision at fingerprint {fp[:16]}: running the data stages", file=sys.stderr)
        result = run_data(recipe, cache)
        print(funnel_table(result), file=sys.stderr)
        repo, rev = publish_dataset(recipe, result, cache, registry)
    return repo, rev, fp


def base_model_dir(recipe, cache: StageCache) -> tuple[Path, str]:
    """A local folder with the base model, and how to name it on the card."""
    spec = recipe.spec.sft.model
    if spec.init is not None:
        from data_pipeline.nano import student

        identity = base_model_identity(spec.model_dump()).replace(":", "-")  # init-<name>-<code hash>
        seed = int(recipe.spec.sft.args.get("seed", 0))
        out = cache.root / "models" / "init" / f"{identity}-seed{seed}"
        if not (out / "config.json").is_file():
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".build-"))
            student.build_student(tmp, spec.init, seed=seed)
            try:
                os.rename(tmp, out)
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)
        return out, f"{spec.init} (made from a config, seed {seed})"
    local = Path(spec.name)
    if local.is_dir():
        return local, spec.name
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(spec.name, revision=spec.revision)), f"{spec.name}@{spec.revision}"


def train(recipe_path: str, *, if_missing: bool = False, cache_root: str | None = None,
          registry_root: str | None = None, num_processes: int | None = None,
          launcher: str | None = None) -> tuple[str, str]:
    from data_pipeline.recipe import load_recipe
    from data_pipeline.registries import load_plugins

    load_plugins()
    recipe = load_recipe(recipe_path)
    if recipe.spec.sft is None:
        raise RecipeError.one(recipe.path, None, "sft", "this recipe has no `sft` section")
    cache = StageCache(Path(cache_root) if cache_root else None)
    registry = open_registry(registry_root)  # a folder, or hf://<namespace> for the Hub
    repo, rev, dataset_fp = ensure_dataset(recipe, cache, registry)
    mfp = model_fingerprint(dataset_fp, recipe.spec.sft.model_dump(mode="json"))
    model_repo = recipe.model_repo
    existing = registry.find_fingerprint("models", model_repo, mfp)
    if existing and if_missing:
        print(f"models/{model_repo} @ {existing[:12]} is trained at fingerprint {mfp[:16]}", file=sys.stderr)
        return model_repo, existing

    base, base_name = base_model_dir(recipe, cache)
    files = sorted(str(p) for p in (registry.snapshot("datasets", repo, rev) / "data").glob("*.parquet"))
    work = cache.root / "sft" / mfp
    card = {"recipe_name": recipe.name, "recipe_version": recipe.version, "fingerprint": dataset_fp,
            "dataset_repo": repo, "dataset_revision": rev, "base_model": base_name, "model_fingerprint": mfp}
    job = {"args": dict(recipe.spec.sft.args), "base_model_dir": str(base), "train_files": files,
           "output_dir": str(work / "model"), "card": card, "prepared_cache": str(cache.root / "sft-prepared")}
    config = accelerate_config(recipe)
    if config is None and launcher:
        config = ACCELERATE_DIR / "ddp.yaml"
    if config is None and _gpu_count() > 1:
        config = ACCELERATE_DIR / "ddp.yaml"
        num_processes = num_processes or _gpu_count()
        print(f"{_gpu_count()} GPUs and no sft.accelerate in the recipe: data parallel with {config}", file=sys.stderr)
    if config is None:
        stats = run_job(job)
    else:
        stats = launch(config, job, work, num_processes=num_processes, launcher=launcher)
    print(f"trained {stats.get('steps')} steps in {stats.get('wall_time_s')}s, "
          f"{stats.get('tokens_per_s')} tokens/s, final loss {stats.get('final_loss')}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="publish-model-") as tmp:
        staged = Path(tmp) / "model"
        shutil.copytree(work / "model", staged, ignore=shutil.ignore_patterns("checkpoints", "runs"))
        commit = registry.publish("models", model_repo, staged, tags=[f"v{recipe.version}", fp_tag(mfp)],
                                  message=f"{recipe.name} {recipe.version} ({mfp[:12]})")
    print(f"published models/{model_repo} @ {commit[:12]}", file=sys.stderr)
    return model_repo, commit


ACCELERATE_DIR = Path(__file__).resolve().parents[1] / "recipes" / "accelerate"


def accelerate_config(recipe) -> Path | None:
    """The recipe's accelerate config file, resolved against the file that names it."""
    from sft.checks import accelerate_config_path

    if recipe.spec.sft.accelerate is None:
        return None
    path, origin, line = accelerate_config_path(recipe)
    if not path.is_file():
        raise RecipeError.one(origin, line, "sft.accelerate", f"no accelerate config at {path}")
    return path


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def run_job(job: dict) -> dict:
    """Train one job (the in-process path, and every rank's body under `accelerate launch`)."""
    from sft.trainer import run_sft

    return run_sft(job["args"], Path(job["base_model_dir"]), job["train_files"], Path(job["output_dir"]),
                   card=job["card"], prepared_cache=Path(job["prepared_cache"]) if job.get("prepared_cache") else None)


def launch_command(config: Path, job_file: Path, num_processes: int | None = None) -> list[str]:
    """`accelerate launch` of `python -m sft worker JOB` with the given config.

    The process count is the one asked for, else the local GPU count on a single-machine
    config, else the config's own `num_processes`."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
    if num_processes is None and _gpu_count() > 0:
        import yaml

        if int((yaml.safe_load(config.read_text()) or {}).get("num_machines", 1)) == 1:
            num_processes = _gpu_count()
    if num_processes is not None:
        cmd += ["--num_processes", str(num_processes)]
    return [*cmd, "-m", "sft", "worker", str(job_file)]


def custom_launch_command(template: str, config: Path, job_file: Path) -> list[str]:
    """`--launcher TEMPLATE`: a shell command with `{config}` and `{job}` placeholders that starts
    the ranks itself (e.g. one `accelerate launch` per node through srun: sft/slurm/train.sbatch)."""
    from data_pipeline.errors import PipelineError

    for placeholder in ("{config}", "{job}"):
        if placeholder not in template:
            raise PipelineError(f"--launcher: the command has no {placeholder} placeholder")
    for path in (config, job_file):
        if shlex.quote(str(path)) != str(path):  # it is pasted into a command line, maybe inside quotes
            raise PipelineError(f"--launcher: the path {path} would need shell quoting; use a cache folder without "
                                "spaces or quotes (COMMONTHOUGHTS_CACHE)")
    return ["bash", "-c", template.replace("{config}", str(config)).replace("{job}", str(job_file))]


def launch(config: Path, job: dict, work: Path, *, num_processes: int | None = None,
           launcher: str | None = None) -> dict:
    """Run `job` on every rank with `accelerate launch` (or the `launcher` command); return the
    main process's stats."""
    from data_pipeline.errors import PipelineError

    work.mkdir(parents=True, exist_ok=True)
    job_file = work / "job.json"
    tmp = work / ".job.json.tmp"
    tmp.write_text(json.dumps(job, indent=2))
    os.replace(tmp, job_file)
    stats_file = Path(job["output_dir"]) / "stats.json"
    stats_file.unlink(missing_ok=True)
    cmd = custom_launch_command(launcher, config, job_file) if launcher else launch_command(config, job_file,
                                                                                             num_processes)
    print("launching: " + shlex.join(cmd), file=sys.stderr)
    rc = subprocess.run(cmd).returncode
    if rc != 0 or not stats_file.is_file():
        raise PipelineError(f"accelerate launch exited with status {rc}; rerun `make sft` to resume from the last "
                            f"checkpoint in {Path(job['output_dir']) / 'checkpoints'}; command: {shlex.join(cmd)}")
    return json.loads(stats_file.read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sft")
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train the recipe's student (building its dataset first if needed)")
    t.add_argument("recipe")
    t.add_argument("--if-missing", action="store_true", help="do nothing when the model exists at its fingerprint")
    t.add_argument("--cache")
    t.add_argument("--registry")
    t.add_argument("--num-processes", type=int, help="processes for `accelerate launch` (default: local GPUs)")
    t.add_argument("--launcher", metavar="COMMAND",
                   help="start the ranks with this shell command instead of a local `accelerate launch`; "
                        "{config} and {job} are replaced by the accelerate config and the job file "
                        "(multi-node: sft/slurm/train.sbatch)")
    w = sub.add_parser("worker", help="one rank of a launched run (started by `train` through accelerate)")
    w.add_argument("job", help="the job file `train` wrote")
    args = ap.parse_args(argv)
    if args.cmd == "worker":
        return run_command(lambda: run_job(json.loads(Path(args.job).read_text())) and None)
    return run_command(lambda: train(args.recipe, if_missing=args.if_missing, cache_root=args.cache,
                                      registry_root=args.registry, num_processes=args.num_processes,
                                      launcher=args.launcher) and None)
