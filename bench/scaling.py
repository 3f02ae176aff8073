"""`python -m bench scaling`: data-stage throughput of the nano base recipe on
1 and 2 local workers, side by side in one run.

Each run starts from an empty stage cache (and an empty teacher request
cache, which lives in it). The runs alternate (1, 2, 1, 2, ...) so that load
from other work on the machine falls on both; per stage the median over the
rounds is reported, with rows in per second and the scaling ratio (seconds on
1 worker over seconds on 2). Both worker counts shard the data the same way
(`execution.tasks`), so their outputs must be identical: checked.
Writes `bench/results/data_scaling.json`.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
RECIPE = ROOT / "recipes" / "nano" / "base.yaml"
WORKERS = (1, 2)


def _round(xs: list[float]) -> float:
    return round(statistics.median(xs), 3)


def bench_scaling(rounds: int = 2) -> list[Path]:
    from bench.run import _env
    from data_pipeline.cache import StageCache
    from data_pipeline.pipeline import run_data
    from data_pipeline.recipe import load_recipe
    from data_pipeline.registries import load_plugins

    load_plugins()
    recipe = load_recipe(RECIPE)
    ex = recipe.spec.data.execution
    runs: list[dict] = []
    outputs: dict[int, list] = {}
    with tempfile.TemporaryDirectory(prefix="ct-bench-scaling-") as tmp:
        for r in range(rounds):
            for w in WORKERS:
                cache = StageCache(Path(tmp) / f"cache-{r}-{w}")
                t0 = time.perf_counter()
                result = run_data(recipe, cache, workers=w, echo=lambda *a, **k: None)
                wall = time.perf_counter() - t0
                assert not any(s.cached for s in result.stages)
                rows = cache.read(result.fingerprint).to_pylist()
                outputs.setdefault(w, rows)
                assert rows == outputs[w] == outputs[WORKERS[0]], "the output depends on the worker count"
                runs.append({"round": r, "workers": w, "data_s": round(wall, 3),
                             "stages": [{"stage": s.stage.id, "op": s.stage.op.name, "kind": s.stage.op.kind,
                                         "rows_in": s.stats["rows_in"], "rows_out": s.stats["rows_out"],
                                         "seconds": round(s.seconds, 3)} for s in result.stages]})
    by_w = {w: [x for x in runs if x["workers"] == w] for w in WORKERS}
    stages = []
    for i, st in enumerate(by_w[WORKERS[0]][0]["stages"]):
        row = {"stage": st["stage"], "op": st["op"], "kind": st["kind"], "rows_in": st["rows_in"]}
        for w in WORKERS:
            secs = _round([x["stages"][i]["seconds"] for x in by_w[w]])
            row[f"seconds_{w}w"] = secs
            row[f"rows_per_s_{w}w"] = round(st["rows_in"] / secs, 1) if secs else None
        row["ratio"] = round(row["seconds_1w"] / row["seconds_2w"], 3) if row["seconds_2w"] else None
        stages.append(row)
    rows_in = by_w[WORKERS[0]][0]["stages"][0]["rows_out"]  # rows entering the pipeline (the mix)
    total = {w: _round([x["data_s"] for x in by_w[w]]) for w in WORKERS}
    doc = {
        "benchmark": "data_scaling",
        "env": _env(),
        "recipe": str(RECIPE.relative_to(ROOT)),
        "executor": "local (datatrove LocalPipelineExecutor)",
        "tasks": ex.tasks,
        "rounds": rounds,
        "note": ("map stages run one task per shard (`tasks` shards), so 2 workers can run both at once; mix and "
                 "dedup are global (one task) and cannot scale; verify scores with `workers` processes of its own. "
                 f"Measured on a machine with {os.cpu_count()} cores that other work shares: ratios below 2 are "
                 "partly that load."),
        "stages": stages,
        "total": {**{f"seconds_{w}w": total[w] for w in WORKERS},
                  **{f"rows_per_s_{w}w": round(rows_in / total[w], 1) for w in WORKERS},
                  "ratio": round(total[1] / total[2], 3)},
        "identical_output": True,
        "runs": runs,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    p = RESULTS / "data_scaling.json"
    p.write_text(json.dumps(doc, indent=2) + "\n")
    return [p]
