"""The nano track end to end through the front door's CLIs: recipe -> dataset ->
student -> results, on a small recipe (a minute on two cores)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_pipeline.registry import LocalRegistry

ROOT = Path(__file__).resolve().parents[1]
SMALL = ROOT / "tests/recipes/good/small.yaml"


@pytest.mark.slow
def test_recipe_to_results(workdir: Path, capsys):
    from eval.cli import main as eval_main
    from sft.cli import main as sft_main

    # `make eval`: train if missing (which builds the dataset first), then score
    assert sft_main(["train", "--if-missing", str(SMALL)]) == 0
    err = capsys.readouterr().err
    assert "running the data stages" in err and "published models/local/small" in err
    assert eval_main(["run", str(SMALL)]) == 0
    out = capsys.readouterr().out
    assert "| small | nano-bench | 200 x 2 |" in out

    registry = LocalRegistry()
    data_card = registry.card("datasets", "local/small", "v1.0.0")
    model_card = registry.card("models", "local/small", "v1.0.0")
    fp = data_card["commonthoughts"]["fingerprint"]
    assert model_card["commonthoughts"]["fingerprint"] == fp
    assert model_card["commonthoughts"]["dataset"]["revision"] == registry.resolve("datasets", "local/small", "v1.0.0")

    results_files = list((workdir / "registry" / "results").rglob("results.json"))
    assert len(results_files) == 1
    res = json.loads(results_files[0].read_text())
    assert res["recipe"]["fingerprint"] == fp
    assert res["model"]["revision"] == registry.resolve("models", "local/small", "v1.0.0")
    m = res["benchmarks"]["nano-bench"]["metrics"]
    assert 0 <= m["pass@1_ci95"][0] <= m["pass@1"] <= m["pass@1_ci95"][1] <= 1
    assert m["pass@1"] <= m["pass@2"] <= 1
    assert (results_files[0].parent / "details.parquet").is_file()

    # a second `make eval` trains nothing: the model exists at its fingerprint
    assert sft_main(["train", "--if-missing", str(SMALL)]) == 0
    assert "is trained at fingerprint" in capsys.readouterr().err
