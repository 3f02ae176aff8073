"""Benchmarks of the curation ops, each measured side by side in one run.

`dedup`: MinHash near-duplicate detection on a generated corpus of 100k
documents with planted near-duplicate pairs at known Jaccard similarity (of
5-gram shingle sets, measured exactly after planting): recall on pairs with
similarity >= 0.8, precision of the removals, the detection rate per
similarity band, and documents per second of our `dedup` (datatrove's MinHash
stages + exact verification) against datasketch's MinHashLSH on the same
documents and shingles.

`decontaminate`: planted copies of the real benchmark problems (MATH-500,
AIME 2024 and 2025, AMC 2023, GSM8K) with light edits (spacing, LaTeX
formatting, numbers written differently, a reworded opening): recall; and the
false positive rate on clean problems (MATH train, 7474 problems, a problem
set disjoint from MATH-500).

`scoring`: scoring throughput on two cores, serial and with two workers side
by side: math verification (samples per second) and code tests in the
sandbox (programs per second).
"""

from __future__ import annotations

import json
import random
import re
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def _write(name: str, doc: dict) -> Path:
    from bench.run import _env

    doc = {"benchmark": name, "env": _env(), **doc}
    RESULTS.mkdir(parents=True, exist_ok=True)
    p = RESULTS / f"{name}.json"
    p.write_text(json.dumps(doc, indent=2) + "\n")
    return p


# ---------------------------------------------------------------- dedup

def _corpus(n_docs: int, seed: int = 0):
    """Random documents over a 20k-word vocabulary (60-120 words; unrelated
    documents share almost no 5-gram), and, for a quarter of them, one copy
    with k words replaced, k spread so that the copies' similarity covers 0.3-1."""
    rng = random.Random(seed)
    # letters only: the math tokenizer splits letters from digits, and the
    # planted similarity must be measured on the shingles dedup compares
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = sorted({"".join(rng.choice(letters) for _ in range(rng.randint(3, 8))) for _ in range(21_000)})[:20_000]
    n_orig = int(n_docs * 0.8)
    originals = [[rng.choice(vocab) for _ in range(rng.randint(60, 120))] for _ in range(n_orig)]
    copies, pairs = [], []
    for j in range(n_docs - n_orig):
        src = originals[j]
        words = list(src)
        k = rng.choice([0, 1, 1, 2, 2, 3, 4, 5, 6, 8, 10, 14])  # words replaced
        for i in rng.sample(range(len(words)), min(k, len(words))):
            words[i] = rng.choice(vocab)
        copies.append(words)
        pairs.append((j, n_orig + len(copies) - 1))
    docs = [" ".join(d) for d in originals + copies]
    return docs, pairs


def _jaccard(a: str, b: str, n: int = 5) -> float:
    from curation.text import tokens

    ta, tb = tokens(a), tokens(b)
    assert ta == a.split(), "the corpus must tokenize as whitespace-separated words"
    ga = {tuple(ta[i:i + n]) for i in range(len(ta) - n + 1)}
    gb = {tuple(tb[i:i + n]) for i in range(len(tb) - n + 1)}
    return len(ga & gb) / len(ga | gb) if ga | gb else 1.0


def bench_dedup(n_docs: int = 100_000) -> list[Path]:
    import tempfile

    import numpy as np
    from datasketch import MinHash, MinHashLSH

    from curation.dedup import DedupParams, minhash_clusters
    from curation.text import tokens

    docs, pairs = _corpus(n_docs)
    sims = {p: _jaccard(docs[p[0]], docs[p[1]]) for p in pairs}
    params = DedupParams(method="minhash", threshold=0.8, ngram=5)
    bands, rows = params.bands_rows()

    # ours: datatrove MinHash + exact verification
    stats: dict = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        clusters = minhash_clusters(docs, params, Path(tmp), stats)
    ours_s = time.perf_counter() - t0
    cluster_of = {i: c for c, members in enumerate(clusters) for i in members}

    # datasketch: same shingles (our tokenizer, 5-grams), same bands and rows
    t0 = time.perf_counter()
    lsh = MinHashLSH(num_perm=bands * rows, params=(bands, rows))
    sketches = []
    for i, d in enumerate(docs):
        m = MinHash(num_perm=bands * rows, seed=1)
        toks = tokens(d)
        m.update_batch([" ".join(toks[j:j + 5]).encode() for j in range(len(toks) - 4)])
        sketches.append(m)
        lsh.insert(i, m, check_duplication=False)
    ds_pairs = set()
    for i, m in enumerate(sketches):
        for j in lsh.query(m):
            if j != i:
                ds_pairs.add((min(i, j), max(i, j)))
    ds_s = time.perf_counter() - t0

    def detected(p) -> bool:
        return p[0] in cluster_of and cluster_of.get(p[0]) == cluster_of.get(p[1])

    high = [p for p in pairs if sims[p] >= 0.8]
    recall = sum(detected(p) for p in high) / len(high)
    # precision: of the documents removed (all cluster members but one), the
    # share whose cluster partner is a planted copy with similarity >= 0.8
    partner = {a: b for a, b in pairs} | {b: a for a, b in pairs}
    removed = true_removed = 0
    for members in clusters:
        for m in members[1:]:  # every member but one is removed
            removed += 1
            other = partner.get(m)
            true_removed += other in members and sims[(min(m, other), max(m, other))] >= 0.8
    precision = true_removed / removed if removed else 1.0
    bands_report = {}
    edges = [0.0, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.01]
    for lo, hi in zip(edges, edges[1:]):
        sel = [p for p in pairs if lo <= sims[p] < hi]
        if sel:
            bands_report[f"[{lo:.2f},{min(hi, 1):.2f})"] = {
                "pairs": len(sel), "ours_detected": round(sum(detected(p) for p in sel) / len(sel), 4),
                "datasketch_candidates": round(sum((min(p), max(p)) in ds_pairs for p in sel) / len(sel), 4)}
    ds_recall = sum((min(p), max(p)) in ds_pairs for p in high) / len(high)
    return [_write("dedup_minhash", {
        "corpus": {"documents": n_docs, "planted_pairs": len(pairs), "pairs_similarity_ge_0.8": len(high),
                   "similarity": "exact Jaccard of 5-gram shingle sets"},
        "params": {"threshold": 0.8, "ngram": 5, "bands": bands, "rows": rows, "verify": True},
        "ours": {"recall_ge_0.8": round(recall, 4), "precision": round(precision, 4), "removed": removed,
                 "seconds": round(ours_s, 2), "docs_per_s": round(n_docs / ours_s), **stats},
        "datasketch": {"candidate_recall_ge_0.8": round(ds_recall, 4), "candidate_pairs": len(ds_pairs),
                       "seconds": round(ds_s, 2), "docs_per_s": round(n_docs / ds_s),
                       "note": "MinHashLSH insert + query with the same bands/rows and shingles; no verification"},
        "speedup_vs_datasketch": round(ds_s / ours_s, 2),
        "detection_by_similarity": bands_report,
        "targets": {"recall_ge_0.8": ">= 0.95", "precision": ">= 0.99"},
    })]


# ---------------------------------------------------------------- decontamination

_OPENINGS = [(r"^Find\b", "Determine"), (r"^What is\b", "Compute"), (r"^How many\b", "Determine how many"),
             (r"^Compute\b", "Calculate"), (r"^Let\b", "Suppose"), (r"^If\b", "Suppose that"),
             (r"^Determine\b", "Find"), (r"^Evaluate\b", "Compute")]
_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"]


def light_edit(text: str, rng: random.Random, kind: str) -> str:
    """One kind of light edit of a problem statement."""
    if kind == "spacing":
        text = re.sub(r"([=+\-])", lambda m: f" {m.group(1)} " if rng.random() < 0.7 else m.group(1), text)
        return re.sub(r" ", lambda m: "  " if rng.random() < 0.1 else " ", text).replace(". ", ".\n", 1)
    if kind == "latex":
        text = text.replace("\\frac", "\\dfrac").replace("(", "\\left(").replace(")", "\\right)")
        text = re.sub(r"\$([^$]+)\$", r"\\(\1\\)", text)
        return text.replace("\\cdot", "\\,\\cdot\\,")
    if kind == "numbers":
        text = re.sub(r"(?<![\d.,$\\{^_])\b([0-9]|1[0-2])\b(?![\d.,}^_])",
                      lambda m: _WORDS[int(m.group(1))] if rng.random() < 0.5 else m.group(1), text)
        text = re.sub(r"(?<![\d.])(\d{4,})(?![\d.])", lambda m: f"{int(m.group(1)):,}", text)
        return re.sub(r"(?<![\d.])(\d+\.\d)(?!\d)", r"\g<1>0", text)
    if kind == "opening":
        for pat, rep in _OPENINGS:
            if re.search(pat, text):
                return re.sub(pat, rep, text, count=1)
        return "Solve the following problem. " + text[0].lower() + text[1:]
    raise ValueError(kind)


def bench_decontaminate() -> list[Path]:
    from curation.decontaminate import DecontaminateParams, find_contamination
    from eval.benchmarks import get_benchmark, shared_data_dir

    benchmarks = ["math500", "aime24", "aime25", "amc23", "gsm8k"]
    params = DecontaminateParams(benchmarks=benchmarks)
    rng = random.Random(0)
    kinds = ["spacing", "latex", "numbers", "opening"]
    per: dict[str, dict] = {}
    t0 = time.perf_counter()
    n_checked = 0
    misses = []
    for b in benchmarks:
        rows = get_benchmark(b).rows()
        for kind in kinds + ["two_edits"]:
            hit = 0
            for r in rows:
                if kind == "two_edits":
                    k1, k2 = rng.sample(kinds, 2)
                    text = light_edit(light_edit(r["problem"], rng, k1), rng, k2)
                else:
                    text = light_edit(r["problem"], rng, kind)
                found = find_contamination(text, None, params)
                n_checked += 1
                ok = found is not None and found["benchmark"] == b
                hit += ok
                if not ok and len(misses) < 20:
                    misses.append({"benchmark": b, "edit": kind, "text": text[:200]})
            per.setdefault(b, {})[kind] = round(hit / len(rows), 4)
    planted_s = time.perf_counter() - t0
    recall_all = {b: round(sum(v.values()) / len(v), 4) for b, v in per.items()}
    weights = {b: len(get_benchmark(b).rows()) for b in benchmarks}
    overall = sum(recall_all[b] * weights[b] for b in benchmarks) / sum(weights.values())

    train = json.loads((shared_data_dir() / "rllm-deepscaler/train_math/math.json").read_text())
    t0 = time.perf_counter()
    fps = []
    for r in train:
        found = find_contamination(r["problem"], None, params)
        if found:
            fps.append({"problem": r["problem"][:160], **found})
    clean_s = time.perf_counter() - t0
    return [_write("decontamination", {
        "benchmarks": benchmarks,
        "params": params.model_dump(exclude={"op"}),
        "planted": {"recall": round(overall, 4), "recall_by_benchmark_and_edit": per,
                    "checked": n_checked, "seconds": round(planted_s, 2), "missed_examples": misses},
        "clean": {"source": "MATH train (rllm-deepscaler/train_math/math.json)", "problems": len(train),
                  "false_positives": len(fps), "false_positive_rate": round(len(fps) / len(train), 5),
                  "seconds": round(clean_s, 2), "false_positive_examples": fps[:30]},
        "targets": {"recall": ">= 0.95", "false_positive_rate": "<= 0.005"},
    })]


# ---------------------------------------------------------------- verification

def bench_scoring() -> list[Path]:
    """Scoring throughput, serial (1 worker) and parallel (2), side by side:
    math-verify on GSM8K model solutions, and HumanEval canonical programs in
    the sandbox."""
    from eval.benchmarks import get_benchmark, shared_data_dir
    from eval.harness import gold_response, render_problem, score_samples
    from eval.scoring import score_many

    path = shared_data_dir() / "gsm8k" / "example_model_solutions.jsonl"
    pairs = []
    for line in path.read_text().splitlines():
        r = json.loads(line)
        gold = r["ground_truth"].split("####")[-1].strip().replace(",", "")
        if "A:" in gold:
            gold = gold.rsplit("A:", 1)[-1].strip().replace(",", "")
        for system in ("6b_finetuning", "175b_verification"):
            pairs.append((gold, r[system]["solution"]))
    pairs = pairs[:2000]
    he = get_benchmark("humaneval")
    rows = he.rows()
    items = []
    for r in rows:
        _, gold = render_problem(he, r, 0)
        items.append({"problem_id": str(r["id"]), "gold": gold, "response": gold_response(he, r, gold)})
    by_id = {str(r["id"]): r for r in rows}
    out: dict[str, dict] = {"math": {}, "code": {}}
    for workers in (1, 2):
        t0 = time.perf_counter()
        scores = score_many(pairs, workers=workers, timeout_s=5.0)
        dt = time.perf_counter() - t0
        out["math"][f"workers_{workers}"] = {"samples": len(pairs), "seconds": round(dt, 2),
                                             "samples_per_s": round(len(pairs) / dt, 1),
                                             "correct": sum(s.correct for s in scores)}
        t0 = time.perf_counter()
        verdicts = score_samples(he, by_id, items, workers=workers, timeout_s=10.0)
        dt = time.perf_counter() - t0
        out["code"][f"workers_{workers}"] = {"programs": len(items), "seconds": round(dt, 2),
                                             "programs_per_s": round(len(items) / dt, 2),
                                             "passed": sum(v[0] for v in verdicts)}
    out["math"]["speedup"] = round(out["math"]["workers_2"]["samples_per_s"] / out["math"]["workers_1"]["samples_per_s"], 2)
    out["code"]["speedup"] = round(out["code"]["workers_2"]["programs_per_s"] / out["code"]["workers_1"]["programs_per_s"], 2)
    return [_write("scoring_throughput", {
        "math_data": "GSM8K example model solutions, 2 systems, first 2000 samples (math-verify, 5 s deadline each)",
        "code_data": "HumanEval canonical solutions (164 programs, 1160 asserts) in the sandbox",
        **out})]
