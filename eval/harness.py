"""The shared eval harness: one engine, some benchmarks, a results record.

`evaluate` asks every problem `samples` times (one request per sample, each with
its own seed derived by hashing (seed, benchmark, problem id, sample index), so
a sample does not depend on batching or on what else is evaluated), scores the
answers in worker processes, and computes per benchmark pass@1 (the mean over
samples, then problems) with a 95% bootstrap interval, unbiased pass@k, and the
rates that explain a score: extraction failures, truncations, engine errors,
scoring timeouts, output length.

`write_results` stores `results.json` (the record) and `details.parquet` (one row
per sample) atomically; `load_results` / `load_details` read them back.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from data_pipeline.cache import atomic_write_bytes, write_parquet
from data_pipeline.engines.base import Completion, Engine, GenerationRequest, Sampling
from eval.benchmarks import Benchmark, data_sha256, get_benchmark
from eval.metrics import avg_at_n, bootstrap_ci, mean_pass_at_k
from eval.scoring import score_many

from eval.schema import SCHEMA_VERSION, validate_results  # noqa: E402

HARNESS_VERSION = "0.2.0"
RESULTS_FILE = "results.json"
DETAILS_FILE = "details.parquet"


def derive_seed(seed: int, benchmark: str, problem_id: str, sample_index: int) -> int:
    """A 63-bit seed for one sample, stable across processes and machines."""
    key = json.dumps([seed, benchmark, problem_id, sample_index], separators=(",", ":"))
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") >> 1


def _chat_template(engine: Engine) -> dict[str, str]:
    """The chat template the prompts were rendered with, by hash (in-process engines)."""
    tok = getattr(engine, "tokenizer", None)
    template = getattr(tok, "chat_template", None) if tok is not None else None
    return {"chat_template_sha256": hashlib.sha256(template.encode()).hexdigest()} if isinstance(template, str) else {}


def _sandbox_mode() -> str:
    from eval.sandbox import sandbox_capabilities

    return str(sandbox_capabilities().get("mode"))


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("math-verify", "latex2sympy2_extended", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:  # pragma: no cover
            pass
    return out


def _generate(engine: Engine, requests: list[GenerationRequest], sampling: Sampling) -> list[Completion]:
    """Every request in one call: each engine schedules its own work (the
    transformers engine batches prompts of similar length, an endpoint keeps
    its concurrency busy, vLLM batches continuously). Progress on stderr."""
    with tqdm(total=len(requests), desc=f"generate ({engine.name})", unit="sample") as bar:
        completions = engine.generate(requests, sampling, on_result=lambda i, c: bar.update(1))
    if len(completions) != len(requests) or any(c is None for c in completions):
        raise RuntimeError(f"engine {engine.name!r} returned {len(completions)} completions for {len(requests)}")
    return completions


def _metrics(details: list[dict[str, Any]], n_problems: int, samples: int, ks: list[int], seed: int,
             answer_type: str = "math") -> dict[str, Any]:
    """pass@1 (avg@n) with a 95% interval from a bootstrap over problems and
    samples; unbiased pass@k and maj@k (majority over the extracted answers,
    grouped by `answer_key`) for each k <= samples, with intervals; and the
    rates that explain a score."""
    from functools import partial

    from eval.metrics import answer_ids, maj_at_k
    from eval.scoring import answer_key

    correct = np.array([d["correct"] for d in details], dtype=np.float64).reshape(n_problems, samples)
    keys = [[answer_key(d["extracted"]) if d["extracted"] is not None else None
             for d in details[i * samples:(i + 1) * samples]] for i in range(n_problems)]
    answers = answer_ids(keys)
    low, high = bootstrap_ci(correct, avg_at_n, n_boot=2000, seed=seed)
    metrics: dict[str, Any] = {"pass@1": avg_at_n(correct), "pass@1_ci95": [low, high]}
    for k in ks:
        if 1 < k <= samples:
            metrics[f"pass@{k}"] = mean_pass_at_k(correct, k)
            metrics[f"pass@{k}_ci95"] = list(bootstrap_ci(correct, partial(mean_pass_at_k, k=k), n_boot=1000, seed=seed))
        if 1 < k <= samples and answer_type != "code":  # a program has no "answer" to vote on
            try:
                metrics[f"maj@{k}"] = maj_at_k(correct, answers, k=k)
                metrics[f"maj@{k}_ci95"] = list(bootstrap_ci(correct, partial(maj_at_k, k=k), answers=answers,
                                                             n_boot=1000, seed=seed))
            except ValueError:  # equal keys with different verdicts (code: "n/m tests"): no majority vote
                pass

    def rate(pred) -> float:
        return float(np.mean([pred(d) for d in details]))

    lengths = np.array([d["completion_tokens"] for d in details], dtype=np.float64)
    metrics.update(
        extraction_failure_rate=rate(lambda d: d["extracted"] is None),
        truncation_rate=rate(lambda d: d["finish_reason"] == "length"),
        error_rate=rate(lambda d: d["finish_reason"] == "error"),
        scoring_timeout_rate=rate(lambda d: d["score_status"] == "timeout"),
        mean_output_tokens=float(lengths.mean()),
        median_output_tokens=float(np.median(lengths)),
        p90_output_tokens=float(np.percentile(lengths, 90)),
        max_output_tokens=float(lengths.max()),
        mean_output_chars=float(np.mean([len(d["response"] or "") for d in details])),
    )
    return metrics


LETTERS = "ABCDEFGHIJ"


def render_problem(bench: Benchmark, row: dict[str, Any], seed: int) -> tuple[str, str]:
    """(user message, gold) for one problem. Multiple choice: the options are
    shuffled per question from (seed, benchmark, problem id), lettered, and the
    gold is the correct option's letter; otherwise the gold is the answer."""
    if bench.answer_type != "multiple_choice":
        return bench.render(row["problem"]), str(row["answer"])
    choices = list(row["choices"])
    order = list(range(len(choices)))
    np.random.default_rng(derive_seed(seed, bench.name, str(row["id"]), -1)).shuffle(order)
    shown = [choices[i] for i in order]
    gold = LETTERS[shown.index(row["answer"])]
    body = row["problem"] + "\n\n" + "\n".join(f"({LETTERS[j]}) {c}" for j, c in enumerate(shown))
    return bench.render(body), gold


def gold_response(bench: Benchmark, row: dict[str, Any], gold: str) -> str:
    """A response that gives the gold answer (the registry's self-check)."""
    if bench.answer_type == "code":
        return f"```python\n{row['answer']}\n```"
    return f"The answer is \\boxed{{{gold}}}."  # a letter for multiple choice, a value for math


def _code_program(bench_row: dict[str, Any], response: str) -> str | None:
    from eval.sandbox import extract_code

    code = extract_code(response or "")
    if code is None:
        return None
    # HumanEval-style prompts import what the signature needs; a chat answer may leave the imports out.
    imports = [ln for ln in str(bench_row.get("problem", "")).splitlines() if ln.startswith(("import ", "from "))]
    return "\n".join(imports + [code]) if imports else code


def score_samples(bench: Benchmark, rows: dict[str, dict[str, Any]], items: list[dict[str, Any]], *,
                  workers: int, timeout_s: float) -> list[tuple[bool, str | None, str]]:
    """(correct, extracted answer, status) for each item (`problem_id`, `gold`,
    `response`) of one benchmark, by its answer type."""
    if bench.answer_type == "math":
        scores = score_many([(it["gold"], it["response"]) for it in items], workers=workers, timeout_s=timeout_s)
        return [(bool(sc.correct), sc.extracted, sc.status) for sc in scores]
    if bench.answer_type == "multiple_choice":
        from eval.scoring import extract_choice

        out = []
        for it in items:
            pick = extract_choice(it["response"] or "", LETTERS[: len(rows[it["problem_id"]]["choices"])])
            out.append((pick == it["gold"], pick, "ok"))
        return out
    from eval.sandbox import score_code_many

    programs = [_code_program(rows[it["problem_id"]], it["response"]) for it in items]
    jobs, where = [], []
    for i, (it, prog) in enumerate(zip(items, programs)):
        if prog is None:
            continue
        row = rows[it["problem_id"]]
        job = {"program": prog, "tests": row["tests"]}
        for key in ("entry_point", "setup"):
            if row.get(key):
                job[key] = row[key]
        jobs.append(job)
        where.append(i)
    out: list[tuple[bool, str | None, str]] = [(False, None, "ok")] * len(items)
    for i, v in zip(where, score_code_many(jobs, workers=workers, per_test_timeout_s=timeout_s,
                                           total_timeout_s=max(60.0, 10 * timeout_s))):
        status = "ok" if v.status in ("ok", "passed", "failed") else v.status
        out[i] = (bool(v.passed), f"{v.n_passed}/{v.n_total} tests", status)
    return out


def summarize(plan: list[tuple[Benchmark, list[dict[str, Any]]]], details: dict[str, list[dict[str, Any]]], *,
              samples: int, ks: list[int] | None, seed: int, limit: int | None) -> dict[str, Any]:
    """Per-benchmark record: the definition, data hash and metrics."""
    per_bench: dict[str, Any] = {}
    for bench, rows in plan:
        wanted = sorted(set(ks if ks is not None else bench.ks) | {1})
        per_bench[bench.name] = {
            **bench.to_dict(),
            "data_sha256": data_sha256(rows),
            "n_problems": len(rows),
            "limit": limit,
            "metrics": _metrics(details[bench.name], len(rows), samples, wanted, seed, bench.answer_type)
            if rows else {},
        }
    return per_bench


def evaluate(
    engine: Engine,
    benchmark_names: list[str],
    *,
    samples: int,
    sampling: Sampling,
    seed: int = 0,
    ks: list[int] | None = None,
    workers: int = 2,
    limit: int | None = None,
    timeout_s: float = 5.0,
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """Evaluate `engine` on the named benchmarks. Returns (results record,
    per-benchmark per-sample details). `ks` defaults to each benchmark's own;
    pass@k is reported for every k <= samples. `limit` keeps the first problems
    of each benchmark (smoke runs; recorded in the results)."""
    if samples < 1:
        raise ValueError("samples must be >= 1")
    started, t0 = datetime.now(timezone.utc), time.perf_counter()
    benches = [get_benchmark(name) for name in dict.fromkeys(benchmark_names)]

    plan: list[tuple[Benchmark, list[dict[str, Any]]]] = []
    requests: list[GenerationRequest] = []
    meta: list[dict[str, Any]] = []
    for bench in benches:
        rows = bench.rows()[:limit] if limit else bench.rows()
        plan.append((bench, rows))
        for row in rows:
            prompt, gold = render_problem(bench, row, seed)
            for j in range(samples):
                s = derive_seed(seed, bench.name, str(row["id"]), j)
                requests.append(GenerationRequest.from_messages([{"role": "user", "content": prompt}], j, s))
                meta.append({
                    "benchmark": bench.name, "problem_id": str(row["id"]), "sample_index": j,
                    "seed": s, "prompt": prompt, "gold": gold,
                })

    completions = _generate(engine, requests, sampling)
    t_generated = time.perf_counter()
    details: dict[str, list[dict[str, Any]]] = {bench.name: [] for bench, _ in plan}
    for m, c in zip(meta, completions):
        details[m["benchmark"]].append({
            # the answer is scored; a reasoning model's thought (split off by the engine) is kept beside it
            **m, "response": c.text, "reasoning": c.reasoning, "extracted": None, "correct": False,
            "score_status": None,
            "finish_reason": c.finish_reason, "error": c.error,
            "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
        })
    rescore_details(plan, details, workers=workers, timeout_s=timeout_s)
    t_scored = time.perf_counter()

    results = {
        "schema_version": SCHEMA_VERSION,
        "harness_version": HARNESS_VERSION,
        "engine": {**engine.identity(), **_chat_template(engine)},
        "sampling": sampling.to_dict(),
        "seed": seed,
        "samples": samples,
        "ks": ks,
        "scoring": {"timeout_s": timeout_s, "workers": workers, "versions": _versions(),
                    **({"sandbox": _sandbox_mode()} if any(b.answer_type == "code" for b, _ in plan) else {})},
        "hardware": {"platform": platform.platform(), "machine": platform.machine(), "python": platform.python_version(),
                     "cpus": os.cpu_count(), "device": str(getattr(engine, "device", "n/a"))},
        "benchmarks": summarize(plan, details, samples=samples, ks=ks, seed=seed, limit=limit),
        "timing": {
            "started_at": started.isoformat(),
            "generation_s": t_generated - t0,
            "scoring_s": t_scored - t_generated,
            "total_s": time.perf_counter() - t0,
        },
    }
    return results, details


def rescore_details(plan: list[tuple[Benchmark, list[dict[str, Any]]]], details: dict[str, list[dict[str, Any]]], *,
                    workers: int, timeout_s: float) -> None:
    """Fill `extracted`, `correct` and `score_status` of every detail row in place."""
    for bench, rows in plan:
        by_id = {str(r["id"]): r for r in rows}
        items = details[bench.name]
        for d, (correct, extracted, status) in zip(
                items, score_samples(bench, by_id, items, workers=workers, timeout_s=timeout_s)):
            d["correct"], d["extracted"], d["score_status"] = correct, extracted, status


def rescore(results: dict[str, Any], details: dict[str, list[dict[str, Any]]], *, workers: int = 2
            ) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """Score a results folder's responses again (no generation) with the
    benchmark definitions and scorers installed now. The benchmark data must be
    the same as when the responses were made (checked by its sha256)."""
    plan = []
    for name, rec in results["benchmarks"].items():
        bench = get_benchmark(name)
        rows = bench.rows()[: rec["limit"]] if rec.get("limit") else bench.rows()
        if data_sha256(rows) != rec["data_sha256"]:
            raise ValueError(f"benchmark {name!r}: its data changed since these responses were scored "
                             f"({rec['data_sha256'][:12]} then, {data_sha256(rows)[:12]} now)")
        plan.append((bench, rows))
    details = {k: [dict(d) for d in v] for k, v in details.items()}
    rescore_details(plan, details, workers=workers, timeout_s=results["scoring"]["timeout_s"])
    new = dict(results)
    new["benchmarks"] = summarize(plan, details, samples=results["samples"], ks=results.get("ks"),
                                  seed=results["seed"], limit=next(iter(results["benchmarks"].values())).get("limit"))
    new["scoring"] = {**results["scoring"], "versions": _versions()}
    return new, details


# ---------------------------------------------------------------------- storage

DETAILS_SCHEMA = pa.schema(
    [
        ("benchmark", pa.string()),
        ("problem_id", pa.string()),
        ("sample_index", pa.int32()),
        ("seed", pa.int64()),
        ("prompt", pa.string()),
        ("gold", pa.string()),
        ("response", pa.string()),
        ("reasoning", pa.string()),
        ("extracted", pa.string()),
        ("correct", pa.bool_()),
        ("score_status", pa.string()),
        ("finish_reason", pa.string()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("error", pa.string()),
    ]
)


def write_results(out_dir: str | Path, results: dict[str, Any], details: dict[str, list[dict[str, Any]]]) -> Path:
    """Write `results.json` and `details.parquet` under `out_dir` (created),
    after checking the record against the results schema."""
    validate_results(json.loads(json.dumps(results, default=str)), "results to write")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [row for bench_rows in details.values() for row in bench_rows]
    write_parquet(pa.Table.from_pylist(rows, schema=DETAILS_SCHEMA), out / DETAILS_FILE)
    text = json.dumps(results, indent=2, ensure_ascii=False, default=str) + "\n"
    atomic_write_bytes(out / RESULTS_FILE, text.encode("utf-8"))
    return out


def load_results(out_dir: str | Path) -> dict[str, Any]:
    path = Path(out_dir) / RESULTS_FILE
    record = json.loads(path.read_text(encoding="utf-8"))
    validate_results(record, str(path))
    return record


def load_details(path: str | Path, columns: list[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Per-benchmark per-sample rows, in the order they were written, of a results
    folder's details file or of a details parquet file itself (`columns`: only these)."""
    path = Path(path)
    file = path / DETAILS_FILE if path.is_dir() else path
    cols = None if columns is None else ["benchmark", *(c for c in columns if c != "benchmark")]
    details: dict[str, list[dict[str, Any]]] = {}
    for row in pq.read_table(file, columns=cols).to_pylist():
        details.setdefault(row["benchmark"], []).append(row)
    return details
