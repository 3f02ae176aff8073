"""`python -m community submit`: a submission record from a finished run.

The "finished runs" here are made without training: a dataset and a model
published to a real local registry (git repos with cards, as `make data` and
`make sft` leave them) and a results folder written by the eval harness's own
writer from a chosen [problems x samples] verdict matrix on nano-bench. So the
tests pin what `submit` reads from each artifact and how it computes the
comparison, in seconds; tests/test_contributor_path.py runs the real thing.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from community.cli import main
from community_recipes import BASE, CHILD
from community.submission import SUBMISSIONS_DIR, parse_contributor
from community.validate import validate_tree
from data_pipeline.registry import LocalRegistry, fp_tag


FUNNEL = [
    {"stage": "mix", "rows_in": 50, "rows_out": 50, "dropped": {}, "extra": {}},
    {"stage": "distill", "rows_in": 48, "rows_out": 48, "dropped": {},
     "extra": {"requests": 96, "requests_new": 96, "prompt_tokens": 1000, "completion_tokens": 5000, "cost": 0.25}},
    {"stage": "distill-more", "rows_in": 48, "rows_out": 48, "dropped": {},
     "extra": {"requests": 4, "prompt_tokens": 10, "completion_tokens": 20}},
]


def _publish(registry: LocalRegistry, kind: str, repo: str, files: dict[str, bytes | str], tag: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        for name, content in files.items():
            p = Path(tmp) / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(content if isinstance(content, bytes) else content.encode())
        return registry.publish(kind, repo, Path(tmp), tags=[tag], message="test")


def _parquet(rows: int) -> bytes:
    buf = pa.BufferOutputStream()
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(rows)]}), buf)
    return buf.getvalue().to_pybytes()


def fake_run(root: Path, rel: str, matrix: np.ndarray, *, rows: int = 40, compute: dict | None = None,
             limit: int | None = None, registry=None) -> dict:
    """Publish a dataset and a model for the recipe at `rel` and write eval
    results whose nano-bench verdicts are `matrix` (the first problems)."""
    from data_pipeline.fingerprint import model_fingerprint
    from data_pipeline.pipeline import plan
    from data_pipeline.recipe import load_recipe
    from data_pipeline.registries import load_plugins
    from eval.benchmarks import get_benchmark
    from eval.cli import results_dir
    from eval.harness import summarize, write_results

    load_plugins()
    registry = registry or LocalRegistry()
    recipe = load_recipe(root / rel)
    fp = plan(recipe)[-1].fingerprint
    mfp = model_fingerprint(fp, recipe.spec.sft.model_dump(mode="json"))
    card = {"commonthoughts": {"recipe": recipe.name, "version": recipe.version, "fingerprint": fp, "funnel": FUNNEL}}
    data_rev = _publish(registry, "datasets", recipe.dataset_repo,
                        {"README.md": f"---\n{yaml.safe_dump(card)}---\n\n# data\n",
                         "data/train-00000-of-00002.parquet": _parquet(rows - 10),
                         "data/train-00001-of-00002.parquet": _parquet(10)}, fp_tag(fp))
    meta = {"base_model": "nano-2m (made from a config, seed 0)",
            "commonthoughts": {"recipe": {"name": recipe.name, "version": recipe.version}, "fingerprint": fp,
                               "dataset": {"repo": recipe.dataset_repo, "revision": data_rev},
                               "model_fingerprint": mfp, **({"compute": compute} if compute else {})}}
    body = ("# model\n\n## Hyperparameters\n\n| name | value |\n|---|---|\n| `seed` | `0` |\n\n"
            "## Run\n\n| stat | value |\n|---|---|\n| wall_time_s | 72 |\n| train_tokens | 123456 |\n"
            "| steps | 12 |\n| world_size | 1 |\n\nSoftware: test.\n")
    model_rev = _publish(registry, "models", recipe.model_repo,
                         {"README.md": f"---\n{yaml.safe_dump(meta)}---\n\n{body}"}, fp_tag(mfp))

    bench = get_benchmark("nano-bench")
    problems = bench.rows()[: matrix.shape[0]]
    details = {bench.name: [
        {"benchmark": bench.name, "problem_id": str(row["id"]), "sample_index": j, "seed": 0, "prompt": "q",
         "gold": str(row["answer"]), "response": "r", "extracted": "1" if v else None, "correct": bool(v),
         "score_status": "ok", "finish_reason": "stop", "prompt_tokens": 1, "completion_tokens": 3, "error": None}
        for row, verdicts in zip(problems, matrix) for j, v in enumerate(verdicts)]}
    results = {
        "schema_version": "1", "harness_version": "0.2.0", "engine": {"name": "fake"},
        "sampling": {"temperature": 0.6, "top_p": 1.0, "max_tokens": 48}, "seed": 0, "samples": matrix.shape[1],
        "ks": None, "scoring": {"timeout_s": 5.0, "versions": {}},
        "hardware": {"platform": "test", "cpus": 2, "device": "cpu"},
        "benchmarks": summarize([(bench, problems)], details, samples=matrix.shape[1], ks=None, seed=0, limit=limit),
        "timing": {"started_at": "2026-11-26T00:00:00", "generation_s": 1.0, "scoring_s": 1.0, "total_s": 2.0},
        "recipe": {"name": recipe.name, "version": recipe.version, "fingerprint": fp},
        "model": {"repo": recipe.model_repo, "revision": model_rev, "fingerprint": mfp},
    }
    write_results(results_dir(registry, recipe.model_repo, model_rev), results, details)
    return {"fingerprint": fp, "model_fingerprint": mfp, "data_rev": data_rev, "model_rev": model_rev,
            "results": results}


@pytest.fixture
def repo(workdir: Path) -> Path:
    """A repository root (the working directory) with a base recipe and an ablation."""
    (workdir / "recipes/nano").mkdir(parents=True)
    (workdir / "recipes/nano/base.yaml").write_text(BASE)
    (workdir / "recipes/nano/child.yaml").write_text(CHILD)
    return workdir


def submit(*args: str) -> int:
    return main(["submit", *args, "--date", "2026-11-26"])


def record(root: Path, sid: str) -> dict:
    return json.loads((root / SUBMISSIONS_DIR / f"{sid}.json").read_text())


def test_submit_a_root_recipe(repo: Path, capsys):
    rng = np.random.default_rng(1)
    run = fake_run(repo, "recipes/nano/base.yaml", (rng.random((60, 2)) < 0.4).astype(float))
    assert submit("recipes/nano/base.yaml", "--contributor", "Ada Lovelace (Analytical Engines Ltd)",
                  "--contributor", "Charles Babbage") == 0
    out = capsys.readouterr().out
    assert "wrote community/submissions/nano-base-1.0.0.json and community/submissions/nano-base-1.0.0.details.parquet" in out

    rec = record(repo, "nano-base-1.0.0")
    m = run["results"]["benchmarks"]["nano-bench"]["metrics"]
    assert rec["id"] == "nano-base-1.0.0" and rec["track"] == "nano" and rec["schema_version"] == 1
    assert rec["recipe"]["path"] == "recipes/nano/base.yaml" and rec["recipe"]["fingerprint"] == run["fingerprint"]
    assert rec["parent"] is None and rec["comparison"] is None
    assert rec["dataset"] == {"repo": "local/nano-base", "revision": run["data_rev"], "rows": 40, "registry": "local"}
    assert rec["model"] == {"repo": "local/nano-base", "revision": run["model_rev"],
                            "fingerprint": run["model_fingerprint"], "base_model": "nano-2m (made from a config, seed 0)"}
    assert rec["results"] == {"nano-bench": {"metric": "pass@1", "mean": m["pass@1"], "ci_low": m["pass@1_ci95"][0],
                                             "ci_high": m["pass@1_ci95"][1], "n": 60, "k": 2}}
    assert rec["harness_version"] == "0.2.0" and rec["hardware"]["device"] == "cpu"
    # compute from the model card's run table (no compute block), teacher accounting from the dataset card
    assert rec["compute"] == {"device_hours": 0.02, "devices": 1, "device_type": "cpu", "sft_wall_time_s": 72.0,
                              "sft_tokens": 123456, "teacher_tokens": 6030, "teacher_requests": 100, "teacher_cost": 0.25}
    assert rec["contributors"] == [{"name": "Ada Lovelace", "institution": "Analytical Engines Ltd"},
                                   {"name": "Charles Babbage", "institution": None}]
    assert rec["date"] == "2026-11-26"
    copied = repo / rec["details"]
    results_dir = repo / "registry/results/local/nano-base" / run["model_rev"]
    assert copied.read_bytes() == (results_dir / "details.parquet").read_bytes()
    assert validate_tree(repo).problems == []


def test_submit_an_ablation_compares_it_with_its_parent(repo: Path, capsys):
    parent = np.zeros((60, 2))
    parent[:15] = 1  # 0.25
    child = np.zeros((60, 2))
    child[:45] = 1  # 0.75: a large, certain improvement on the same problems
    fake_run(repo, "recipes/nano/base.yaml", parent)
    fake_run(repo, "recipes/nano/child.yaml", child)
    assert submit("recipes/nano/base.yaml", "--contributor", "Ada") == 0
    assert submit("recipes/nano/child.yaml", "--contributor", "Grace Hopper (Navy)") == 0
    out = capsys.readouterr().out
    assert "vs nano-base-1.0.0: +0.5000" in out and "(significant)" in out

    rec = record(repo, "nano-child-1.0.0")
    assert rec["parent"] == {"path": "recipes/nano/base.yaml", "id": "nano-base-1.0.0"}
    cmp = rec["comparison"]
    assert cmp["parent"] == "nano-base-1.0.0" and cmp["method"] == "paired-bootstrap"
    b = cmp["benchmarks"]["nano-bench"]
    parent_mean = record(repo, "nano-base-1.0.0")["results"]["nano-bench"]["mean"]
    assert b["delta"] == pytest.approx(rec["results"]["nano-bench"]["mean"] - parent_mean, abs=1e-12)
    assert b["delta"] == pytest.approx(0.5) and b["parent_mean"] == pytest.approx(0.25)
    assert b["problems"] == 60 and b["significant"] is True and b["ci_low"] > 0 and b["p_value"] < 0.01
    assert validate_tree(repo).problems == []


def test_no_difference_is_not_significant(repo: Path):
    rng = np.random.default_rng(3)
    same = (rng.random((60, 2)) < 0.5).astype(float)
    fake_run(repo, "recipes/nano/base.yaml", same)
    fake_run(repo, "recipes/nano/child.yaml", same)
    assert submit("recipes/nano/base.yaml", "--contributor", "Ada") == 0
    assert submit("recipes/nano/child.yaml", "--contributor", "Ada") == 0
    b = record(repo, "nano-child-1.0.0")["comparison"]["benchmarks"]["nano-bench"]
    assert b["delta"] == 0 and b["significant"] is False and b["ci_low"] <= 0 <= b["ci_high"]


def test_an_ablation_needs_its_parents_submission(repo: Path, capsys):
    fake_run(repo, "recipes/nano/child.yaml", np.ones((10, 2)))
    assert submit("recipes/nano/child.yaml", "--contributor", "Ada") == 1
    err = capsys.readouterr().err
    assert "the parent recipes/nano/base.yaml has no submission" in err
    assert "make submit RECIPE=recipes/nano/base.yaml" in err
    assert not (repo / SUBMISSIONS_DIR / "nano-child-1.0.0.json").exists()


def test_submit_without_a_run(repo: Path, capsys):
    assert submit("recipes/nano/base.yaml", "--contributor", "Ada") == 1
    err = capsys.readouterr().err
    assert "has no model at this recipe's fingerprint" in err and "make eval RECIPE=recipes/nano/base.yaml" in err


def test_submit_refuses_smoke_runs_and_overwrites(repo: Path, capsys):
    fake_run(repo, "recipes/nano/base.yaml", np.ones((10, 2)), limit=10)
    assert submit("recipes/nano/base.yaml", "--contributor", "Ada") == 1
    assert "ran with --limit" in capsys.readouterr().err

    fake_run(repo, "recipes/nano/base.yaml", np.ones((10, 2)))
    assert submit("recipes/nano/base.yaml", "--contributor", "Ada", "--no-details") == 0
    assert record(repo, "nano-base-1.0.0")["details"] is None
    assert not (repo / SUBMISSIONS_DIR / "nano-base-1.0.0.details.parquet").exists()
    assert submit("recipes/nano/base.yaml", "--contributor", "Ada") == 1
    assert "exists; a new run of a recipe is a new version" in capsys.readouterr().err
    assert submit("recipes/nano/base.yaml", "--contributor", "Ada", "--force") == 0
    assert record(repo, "nano-base-1.0.0")["details"] == f"{SUBMISSIONS_DIR}/nano-base-1.0.0.details.parquet"


def test_compute_block_of_the_model_card_wins(repo: Path):
    """When the trainer writes `commonthoughts.compute` on the model card, it is
    used as is (device hours of a multi-GPU run are not wall time / 3600)."""
    compute = {"wall_time_s": 3600.0, "train_tokens": 5_000_000, "devices": 8, "device_type": "NVIDIA H100",
               "device_hours": 8.0}
    fake_run(repo, "recipes/nano/base.yaml", np.ones((10, 2)), compute=compute)
    assert submit("recipes/nano/base.yaml", "--contributor", "Ada") == 0
    c = record(repo, "nano-base-1.0.0")["compute"]
    assert (c["device_hours"], c["devices"], c["device_type"], c["sft_wall_time_s"], c["sft_tokens"]) == \
        (8.0, 8, "NVIDIA H100", 3600.0, 5_000_000)


def test_contributors_from_the_environment(repo: Path, monkeypatch, capsys):
    fake_run(repo, "recipes/nano/base.yaml", np.ones((10, 2)))
    monkeypatch.setenv("COMMONTHOUGHTS_CONTRIBUTOR", "Ada Lovelace (Analytical Engines); Alan Turing (NPL)")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", "/dev/null")
    assert submit("recipes/nano/base.yaml") == 0
    assert record(repo, "nano-base-1.0.0")["contributors"] == [
        {"name": "Ada Lovelace", "institution": "Analytical Engines"}, {"name": "Alan Turing", "institution": "NPL"}]
    monkeypatch.delenv("COMMONTHOUGHTS_CONTRIBUTOR")
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    assert submit("recipes/nano/base.yaml", "--force") == 1  # no git repo here, no user.name: nobody to credit
    assert "no contributor" in capsys.readouterr().err


def test_parse_contributor():
    assert parse_contributor("Ada Lovelace (Analytical Engines Ltd)") == \
        {"name": "Ada Lovelace", "institution": "Analytical Engines Ltd"}
    assert parse_contributor("  Grace Hopper ") == {"name": "Grace Hopper", "institution": None}
    assert parse_contributor("Alan (Turing) Mathison") == {"name": "Alan (Turing) Mathison", "institution": None}
    with pytest.raises(ValueError, match="no name"):
        parse_contributor("(Somewhere)")


def test_a_recipe_outside_recipes_is_refused(repo: Path, capsys):
    (repo / "elsewhere.yaml").write_text(BASE)
    assert submit("elsewhere.yaml", "--contributor", "Ada") == 2
    assert "a submitted recipe must live under" in capsys.readouterr().err


# --------------------------------------------------------------------------- reproduce
# The rerun itself (a real eval of a real model) is in tests/test_contributor_path.py;
# here: the checks made before it, and the verdicts, with the eval stubbed.

def _submitted(repo: Path, matrix: np.ndarray) -> dict:
    run = fake_run(repo, "recipes/nano/base.yaml", matrix)
    assert submit("recipes/nano/base.yaml", "--contributor", "Ada") == 0
    return run


def _stub_eval(monkeypatch, pass1: float | None) -> list:
    calls = []

    def evaluate_model(model_dir, revision, spec, *, limit=None):
        calls.append((Path(model_dir), revision, spec.samples))
        metrics = {} if pass1 is None else {"pass@1": pass1, "pass@1_ci95": [pass1, pass1]}
        return {"benchmarks": {"nano-bench": {"metrics": metrics}}}, {}

    monkeypatch.setattr("eval.cli.evaluate_model", evaluate_model)
    return calls


def test_reproduce_verdicts(repo: Path, monkeypatch, capsys):
    run = _submitted(repo, (np.random.default_rng(5).random((60, 2)) < 0.5).astype(float))
    pub = record(repo, "nano-base-1.0.0")["results"]["nano-bench"]
    calls = _stub_eval(monkeypatch, pub["mean"])
    assert main(["reproduce", f"{SUBMISSIONS_DIR}/nano-base-1.0.0.json"]) == 0
    out = capsys.readouterr().out
    assert f"dataset local/nano-base @ {run['data_rev'][:12]}: fingerprint {run['fingerprint'][:16]} ok, 40 rows" in out
    assert (f"nano-bench: reproduced: published pass@1 {pub['mean']:.4f} [{pub['ci_low']:.4f}, {pub['ci_high']:.4f}], "
            f"rerun {pub['mean']:.4f} (identical)") in out
    # the model evaluated is the registry's snapshot at the recorded revision, with the recipe's eval section
    assert calls[0][0].name == run["model_rev"] and calls[0][1] == run["model_rev"] and calls[0][2] == 2

    _stub_eval(monkeypatch, pub["ci_high"] + 0.01)
    assert main(["reproduce", f"{SUBMISSIONS_DIR}/nano-base-1.0.0.json"]) == 1
    out = capsys.readouterr().out
    assert f"nano-bench: NOT reproduced: published pass@1 {pub['mean']:.4f}" in out
    assert f"rerun {pub['ci_high'] + 0.01:.4f} (difference +" in out and "0/1 benchmarks reproduced" in out

    _stub_eval(monkeypatch, None)
    assert main(["reproduce", f"{SUBMISSIONS_DIR}/nano-base-1.0.0.json"]) == 1
    assert "NOT reproduced: the rerun has no pass@1" in capsys.readouterr().out


def test_reproduce_checks_the_artifacts_first(repo: Path, monkeypatch, capsys):
    run = _submitted(repo, np.ones((10, 2)))
    calls = _stub_eval(monkeypatch, 1.0)
    path = repo / SUBMISSIONS_DIR / "nano-base-1.0.0.json"
    rec = json.loads(path.read_text())

    # a dataset card whose fingerprint is not the recipe's (another dataset published at that revision)
    registry = LocalRegistry()
    bad = _publish(registry, "datasets", "local/other", {"README.md": "---\ncommonthoughts: {fingerprint: abc}\n---\n"},
                   "x")
    path.write_text(json.dumps({**rec, "dataset": {**rec["dataset"], "repo": "local/other", "revision": bad}}))
    assert main(["reproduce", str(path)]) == 1
    assert "its card's fingerprint abc is not the recipe's" in capsys.readouterr().err

    # a repo the registry does not hold at all
    path.write_text(json.dumps({**rec, "model": {**rec["model"], "repo": "local/gone"}}))
    assert main(["reproduce", str(path)]) == 1
    assert "models/local/gone has neither revision" in capsys.readouterr().err

    # the recipe in this checkout is not the one that ran
    path.write_text(json.dumps(rec))
    (repo / "recipes/nano/base.yaml").write_text(BASE.replace("count: 50", "count: 60"))
    assert main(["reproduce", str(path)]) == 1
    assert "check out the commit that added the submission" in capsys.readouterr().err

    # a submission that does not match the schema
    path.write_text(json.dumps({**rec, "results": {}}))
    assert main(["reproduce", str(path)]) == 2
    assert "nano-base-1.0.0.json:1: results: Dictionary should have at least 1 item" in capsys.readouterr().err
    assert calls == [] and run["model_rev"]

    # a run made on another machine, rebuilt here (`make eval`): found by fingerprint, and said so
    (repo / "recipes/nano/base.yaml").write_text(BASE)
    other = {**rec, "dataset": {**rec["dataset"], "revision": "d" * 40}, "model": {**rec["model"], "revision": "e" * 40}}
    path.write_text(json.dumps(other))
    assert main(["reproduce", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"datasets/local/nano-base: revision {'d' * 12} is not in this registry; using {run['data_rev'][:12]}" in out
    assert f"models/local/nano-base: revision {'e' * 12} is not in this registry; using {run['model_rev'][:12]}" in out
    assert calls[-1][1] == run["model_rev"]


def test_submit_and_reproduce_through_the_hub(repo: Path, monkeypatch, capsys):
    """A run published to the Hub (data_pipeline.hub.HubRegistry, here on the
    Hub registry tests' in-memory fake client): the record names the Hub repo
    ids and `hub` as the registry, and reproduce downloads both at the recorded
    revisions."""
    from community.reproduce import reproduce
    from community.submission import build_submission, write_submission
    from data_pipeline.hub import HubRegistry
    from test_hub_registry import FakeHubApi

    api = FakeHubApi(repo / "hub")
    hub = HubRegistry("my-lab", api=api, root=repo / "registry")
    run = fake_run(repo, "recipes/nano/base.yaml", np.ones((10, 2)), registry=hub)
    rec, details = build_submission("recipes/nano/base.yaml", root=repo, registry=hub,
                                    contributors=[{"name": "Ada", "institution": None}])
    assert rec["dataset"]["registry"] == "hub"
    assert (rec["dataset"]["repo"], rec["model"]["repo"]) == ("my-lab/nano-base", "my-lab/nano-base")
    assert (rec["dataset"]["revision"], rec["model"]["revision"]) == (run["data_rev"], run["model_rev"])
    write_submission(rec, repo, details)

    monkeypatch.setattr("data_pipeline.hub.hub_api", lambda: api)
    _stub_eval(monkeypatch, 1.0)
    api.calls.clear()
    assert reproduce(f"{SUBMISSIONS_DIR}/nano-base-1.0.0.json", root=repo) == 0
    assert "from the Hub" in capsys.readouterr().out
    assert [(c["repo_id"], c["repo_type"], c["revision"]) for c in api.of("snapshot_download")] == [
        ("my-lab/nano-base", "dataset", run["data_rev"]), ("my-lab/nano-base", "model", run["model_rev"])]
