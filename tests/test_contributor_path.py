"""The whole contributor path on the nano track, through the CLIs behind the
Makefile's targets, in a temporary repository:

copy the base recipe -> change one stage in an ablation that `extends` it ->
run both (`make eval`) -> `make submit` both -> `make validate` ->
`make leaderboard` -> `make reproduce` the ablation; the ablation's row shows
its paired difference from the parent.

The base recipe is the real `recipes/nano/base.yaml` with its SFT and eval
made small (as tests/recipes/good/small.yaml), so each training takes well
under a minute on two cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

ABLATION = """\
# Ablation: verification off (every teacher sample is kept, wrong ones included).
extends: base.yaml
name: nano-no-verify
version: 1.0.0
description: nano-base with verification off.
data:
  stages:
    verify: {keep: all}
"""


def small_base() -> str:
    base = yaml.safe_load((ROOT / "recipes/nano/base.yaml").read_text())
    base["data"]["sources"]["arith"]["count"] = 1500
    base["sft"]["args"] = {"learning_rate": 3.0e-3, "max_steps": 12, "per_device_train_batch_size": 8,
                           "global_batch_size": 16, "max_length": 256, "seed": 0, "logging_steps": 4}
    base["eval"] = {"benchmarks": ["nano-bench"], "samples": 2, "sampling": {"temperature": 0.6, "max_tokens": 48},
                    "ks": [1, 2], "seed": 0}
    return yaml.safe_dump(base, sort_keys=False)


@pytest.mark.slow
def test_contributor_path(workdir: Path, capsys):
    from community.cli import main as community
    from eval.cli import main as eval_main
    from sft.cli import main as sft_main

    root = workdir  # the temporary repository (also the working directory, as for `make`)
    (root / "recipes/nano").mkdir(parents=True)
    (root / "community/submissions").mkdir(parents=True)
    (root / "recipes/nano/base.yaml").write_text(small_base())
    sub = root / "community/submissions"

    # the parent's run and submission (on the real repo these already exist)
    assert sft_main(["train", "--if-missing", "recipes/nano/base.yaml"]) == 0
    assert eval_main(["run", "recipes/nano/base.yaml"]) == 0
    assert community(["submit", "recipes/nano/base.yaml", "--root", str(root),
                      "--contributor", "CommonThoughts maintainers"]) == 0

    # the contributor: one change against the parent, run at the parent's scale, submit
    (root / "recipes/nano/no-verify.yaml").write_text(ABLATION)
    assert sft_main(["train", "--if-missing", "recipes/nano/no-verify.yaml"]) == 0
    assert eval_main(["run", "recipes/nano/no-verify.yaml"]) == 0
    capsys.readouterr()
    assert community(["submit", "recipes/nano/no-verify.yaml", "--root", str(root),
                      "--contributor", "Ada Lovelace (Analytical Engines Ltd)",
                      "--contributor", "Alan Turing (NPL)"]) == 0
    assert "vs nano-base-1.0.0:" in capsys.readouterr().out

    parent = json.loads((sub / "nano-base-1.0.0.json").read_text())
    child = json.loads((sub / "nano-no-verify-1.0.0.json").read_text())
    assert child["parent"] == {"path": "recipes/nano/base.yaml", "id": "nano-base-1.0.0"}
    assert child["contributors"][0] == {"name": "Ada Lovelace", "institution": "Analytical Engines Ltd"}
    assert child["dataset"]["rows"] > parent["dataset"]["rows"]  # verification off keeps more samples
    assert child["compute"]["teacher_tokens"] > 0 and child["compute"]["sft_tokens"] > 0
    b = child["comparison"]["benchmarks"]["nano-bench"]
    assert b["problems"] == 200
    assert b["delta"] == pytest.approx(child["results"]["nano-bench"]["mean"] - parent["results"]["nano-bench"]["mean"],
                                       abs=1e-12)
    assert b["significant"] == (b["ci_low"] > 0 or b["ci_high"] < 0)

    # CI: `make validate`
    assert community(["validate", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "ok  community/submissions/nano-no-verify-1.0.0.json  nano-no-verify 1.0.0 vs nano-base-1.0.0" in out

    # `make leaderboard`: the ablation's row shows its delta against the parent
    assert community(["leaderboard", "--root", str(root)]) == 0
    board = (root / "community/LEADERBOARD.md").read_text()
    row = next(line for line in board.splitlines() if "nano-no-verify" in line and line.startswith("|"))
    assert f"{b['delta']:+.3f} [{b['ci_low']:+.3f}, {b['ci_high']:+.3f}]".replace("-0.000", "+0.000") in row
    assert (root / "site/index.html").is_file()

    # a maintainer: `make reproduce SUBMISSION=...` from the registry
    capsys.readouterr()
    assert community(["reproduce", "community/submissions/nano-no-verify-1.0.0.json", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    mean = child["results"]["nano-bench"]["mean"]
    assert f"nano-bench: reproduced: published pass@1 {mean:.4f}" in out
    assert "(identical)" in out  # same machine, same seed: the eval rerun is bit-identical
    assert "1/1 benchmarks reproduced" in out

    # `make reproduce ... REPRODUCE_ARGS=--sft`: train the student again from the published dataset
    assert community(["reproduce", "community/submissions/nano-no-verify-1.0.0.json", "--root", str(root),
                      "--sft", "--out", str(root / "rerun")]) == 0
    out = capsys.readouterr().out
    assert "retraining nano-no-verify" in out and "1/1 benchmarks reproduced (retrained" in out
    rerun = json.loads((root / "rerun/results.json").read_text())
    assert rerun["model"]["retrained"] is True and rerun["recipe"]["fingerprint"] == child["recipe"]["fingerprint"]
