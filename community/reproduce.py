"""`python -m community reproduce SUBMISSION`: rerun a submission from its
published artifacts and say, per benchmark, whether its result reproduces.

1. The submission is read (schema-checked) and its recipe loaded from this
   checkout; the dataset fingerprint recomputed from the recipe must be the
   recorded one (otherwise the checkout's recipe is not what ran).
2. The dataset and the model are fetched at their recorded revisions: from the
   local registry, or from the Hugging Face Hub when the submission's
   `dataset.registry` is `hub` or with `--hub` (`snapshot_download(repo, revision=...)`). The dataset card's
   fingerprint must be the recipe's, the model card's dataset fingerprint and
   model fingerprint the recorded ones, and the dataset must have the recorded
   number of rows.
3. The model is scored again with the recipe's `eval` section, through the same
   function `python -m eval run` uses. With `--sft` the student is first
   trained again from the fetched dataset (into a temporary folder), and that
   model is scored instead.
4. Per benchmark: `reproduced` when the new mean lies inside the published 95%
   interval, else `NOT reproduced`, with both numbers. Exit status 0 when every
   benchmark reproduced, 1 otherwise (2 for a malformed submission or recipe).

On the same machine with the same seed, an eval rerun is bit-identical; on
other hardware sampling can differ, which is what the interval allows for.
Retraining (`--sft`) adds training noise, which the interval does not cover:
on the nano track another training seed moved base pass@1 from 0.41 to 0.48.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from data_pipeline.errors import PipelineError, RecipeError
from community.submission import eval_fingerprint, load_submission, relative_to_root


def fetch(kind: str, repo: str, revision: str, *, hub: bool, registry, fingerprint: str,
          echo=print) -> tuple[Path, str]:
    """(folder, revision) of `repo` at `revision` (kind: datasets or models): from the
    Hub (`repo` is then a Hub repo id; the token, for a private repo, is
    `HF_TOKEN` from the environment, as for publishing), or from the local
    registry. A local registry that lacks the revision (the run was made on
    another machine) but holds the repo at the same `fingerprint` (rebuilt here
    with `make eval RECIPE=...`) serves that revision instead, and says so."""
    if hub:
        from data_pipeline.hub import REPO_TYPES, hub_api

        return Path(hub_api().snapshot_download(repo, repo_type=REPO_TYPES[kind], revision=revision)), revision
    if registry.resolve(kind, repo, revision) is None:
        rebuilt = registry.find_fingerprint(kind, repo, fingerprint)
        if rebuilt is None:
            raise PipelineError(f"{kind}/{repo} has neither revision {revision[:12]} nor a revision at fingerprint "
                                f"{fingerprint[:16]} in the registry {registry.root}: fetch it, use --hub, or "
                                "rebuild it (make eval RECIPE=<the submission's recipe>)")
        echo(f"  {kind}/{repo}: revision {revision[:12]} is not in this registry; using {rebuilt[:12]}, "
             f"a rebuild at the same fingerprint {fingerprint[:16]}")
        revision = rebuilt
    return registry.snapshot(kind, repo, revision), revision


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise PipelineError(what)


def reproduce(submission: str | Path, *, root: str | Path = ".", registry_root: str | Path | None = None,
              hub: bool = False, sft: bool = False, out: str | Path | None = None, echo=print) -> int:
    from data_pipeline.fingerprint import model_fingerprint
    from data_pipeline.pipeline import plan
    from data_pipeline.recipe import load_recipe
    from data_pipeline.registries import load_plugins
    from data_pipeline.hub import open_registry
    from data_pipeline.registry import LocalRegistry, read_card_data
    from eval.cli import evaluate_model

    root = Path(root).resolve()
    spath = Path(submission)
    if not spath.is_file() and not spath.is_absolute() and (root / spath).is_file():
        spath = root / spath
    sub = load_submission(spath, relative_to_root(spath, root) or str(spath))
    load_plugins()
    recipe = load_recipe(root / sub["recipe"]["path"])
    if recipe.spec.eval is None or recipe.spec.sft is None:
        raise RecipeError.one(recipe.path, None, "eval", "the recipe has no `eval` (or no `sft`) section")
    fp = plan(recipe)[-1].fingerprint
    _check(fp == sub["recipe"]["fingerprint"],
           f"{sub['recipe']['path']} in this checkout has fingerprint {fp[:16]}, the submission {sub['recipe']['fingerprint'][:16]}: "
           "check out the commit that added the submission")
    _check(eval_fingerprint(recipe.spec.eval) == sub["recipe"]["eval_fingerprint"],
           f"the eval section of {sub['recipe']['path']} differs from the one the submission ran")
    mfp = model_fingerprint(fp, recipe.spec.sft.model_dump(mode="json"))
    _check(mfp == sub["model"]["fingerprint"], f"the recipe's model fingerprint {mfp[:16]} is not the submission's")

    registry = open_registry(registry_root)
    hub = hub or sub["dataset"]["registry"] == "hub" or not isinstance(registry, LocalRegistry)
    where = "the Hub" if hub else f"the registry {registry.root}"
    echo(f"reproducing {sub['id']} ({sub['recipe']['path']}) from {where}")
    ds, md = sub["dataset"], sub["model"]
    data_dir, data_rev = fetch("datasets", ds["repo"], ds["revision"], hub=hub, registry=registry, fingerprint=fp, echo=echo)
    card = read_card_data(data_dir / "README.md").get("commonthoughts") or {}
    _check(card.get("fingerprint") == fp, f"datasets/{ds['repo']} @ {data_rev[:12]}: its card's fingerprint "
                                          f"{str(card.get('fingerprint'))[:16]} is not the recipe's {fp[:16]}")
    import pyarrow.parquet as pq

    files = sorted((data_dir / "data").glob("*.parquet"))
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    _check(rows == ds["rows"], f"datasets/{ds['repo']} @ {data_rev[:12]} has {rows} rows, the submission {ds['rows']}")
    echo(f"  dataset {ds['repo']} @ {data_rev[:12]}: fingerprint {fp[:16]} ok, {rows} rows")

    model_dir, model_rev = fetch("models", md["repo"], md["revision"], hub=hub, registry=registry, fingerprint=mfp, echo=echo)
    mcard = read_card_data(model_dir / "README.md").get("commonthoughts") or {}
    _check(mcard.get("fingerprint") == fp and mcard.get("model_fingerprint") == mfp,
           f"models/{md['repo']} @ {model_rev[:12]}: its card's fingerprints are not the submission's")
    _check((mcard.get("dataset") or {}).get("revision") == data_rev,
           f"models/{md['repo']} @ {model_rev[:12]} was trained on another dataset revision "
           f"({str((mcard.get('dataset') or {}).get('revision'))[:12]})")
    echo(f"  model {md['repo']} @ {model_rev[:12]}: fingerprint {mfp[:16]} ok")

    with tempfile.TemporaryDirectory(prefix="reproduce-") as tmp:
        if sft:
            model_dir = _retrain(recipe, files, Path(tmp), sub, echo)
        results, details = evaluate_model(model_dir, model_rev, recipe.spec.eval)
    if out:
        from eval.harness import write_results

        results["recipe"] = {"name": recipe.name, "version": recipe.version, "fingerprint": fp,
                             "path": sub["recipe"]["path"]}
        results["model"] = {"repo": md["repo"], "revision": model_rev, "fingerprint": mfp,
                            "retrained": sft}
        write_results(out, results, details)
        echo(f"  rerun results: {Path(out) / 'results.json'}")
    verdicts = verdict_lines(sub, results)
    for line, _ in verdicts:
        echo(line)
    n_ok = sum(ok for _, ok in verdicts)
    echo(f"{n_ok}/{len(verdicts)} benchmarks reproduced"
         + (" (retrained: the interval covers eval noise, not training noise)" if sft else ""))
    return 0 if n_ok == len(verdicts) else 1


def verdict_lines(sub: dict[str, Any], results: dict[str, Any]) -> list[tuple[str, bool]]:
    """(line, reproduced) per benchmark of the submission: reproduced when the
    rerun's value lies inside the published 95% interval."""
    out = []
    for bench, pub in sub["results"].items():
        head = f"{bench}: published {pub['metric']} {pub['mean']:.4f} [{pub['ci_low']:.4f}, {pub['ci_high']:.4f}]"
        rec = results["benchmarks"].get(bench)
        new = (rec or {}).get("metrics", {}).get(pub["metric"])
        if new is None:
            out.append((f"{bench}: NOT reproduced: the rerun has no {pub['metric']} ({head})", False))
            continue
        ok = pub["ci_low"] <= new <= pub["ci_high"]
        same = " (identical)" if new == pub["mean"] else f" (difference {new - pub['mean']:+.4f})"
        out.append((f"{bench}: {'reproduced' if ok else 'NOT reproduced'}: {head.split(': ', 1)[1]}, "
                    f"rerun {new:.4f}{same}", ok))
    return out


def _retrain(recipe, files: list[Path], tmp: Path, sub: dict[str, Any], echo) -> Path:
    """Train the recipe's student again on the fetched dataset files, as
    `python -m sft train` does (in this process, or with `accelerate launch`
    when the recipe names an accelerate config), into a temporary folder."""
    from data_pipeline.cache import StageCache
    from sft import cli as sft_cli

    base, base_name = sft_cli.base_model_dir(recipe, StageCache())
    card = {"recipe_name": recipe.name, "recipe_version": recipe.version, "fingerprint": sub["recipe"]["fingerprint"],
            "dataset_repo": sub["dataset"]["repo"], "dataset_revision": sub["dataset"]["revision"],
            "base_model": base_name, "model_fingerprint": sub["model"]["fingerprint"], "reproduction_of": sub["id"]}
    job = {"args": dict(recipe.spec.sft.args), "base_model_dir": str(base), "train_files": [str(f) for f in files],
           "output_dir": str(tmp / "model"), "card": card}
    echo(f"  retraining {recipe.name} on {len(files)} dataset file(s) (--sft)")
    config = sft_cli.accelerate_config(recipe)
    stats = sft_cli.launch(config, job, tmp / "job") if config else sft_cli.run_job(job)
    echo(f"  trained {stats.get('steps')} steps in {stats.get('wall_time_s')}s, final loss {stats.get('final_loss')}")
    return tmp / "model"
