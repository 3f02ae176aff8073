"""`dedup`: exact and near-duplicate (MinHash) deduplication of questions.

`method: exact` drops rows whose normalised problem tokens (curation.text:
case, Unicode, LaTeX spacing and sizing, digit grouping) was seen before.

`method: minhash` runs datatrove's MinHash stages (signatures, LSH buckets,
union-find clustering) on the problems, shingled into word n-grams by the
math-aware tokenizer of curation.text (problems shorter than `ngram` tokens are
one shingle of all their tokens). A pair is a near-duplicate when the Jaccard
similarity of its shingle sets reaches `threshold` (0.8): LSH bands and rows
are tuned for recall at that threshold (or given: `num_buckets`,
`hashes_per_bucket`), and each candidate pair is then checked exactly
(`verify`), so precision does not pay for recall.

Which member of a cluster is kept is our rule, not datatrove's (it keeps the
root of its union-find, which depends on merge order): the first row that has
a gold answer, else the first row, in stage order (the mix order is seeded, so
this is deterministic). Every row of a cluster gets `dedup_cluster` (the kept
row's id) in its `meta`, and dropped rows `duplicate_of`; the provenance config
(kept rows) and the dropped config of the published dataset carry them. The
same keep rule applies to exact duplicates.
"""

from __future__ import annotations

import json
import struct
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from curation.text import normalise, tokens
from data_pipeline.ops import OpContext, OpParams, OpResult, register_op


class DedupParams(OpParams):
    method: Literal["exact", "minhash"] = "exact"
    field: Literal["problem"] = "problem"
    # minhash
    ngram: int = Field(default=5, ge=1, le=32)
    threshold: float = Field(default=0.8, gt=0, lt=1)  # Jaccard similarity of a near-duplicate pair
    verify: bool = True  # check each LSH candidate pair's exact Jaccard against `threshold`
    num_buckets: int | None = Field(default=None, ge=1, le=512)
    hashes_per_bucket: int | None = Field(default=None, ge=1, le=256)
    num_perm: int = Field(default=128, ge=16, le=2048)  # hashes in all, when bands and rows are derived
    seed: int = 1

    @model_validator(mode="after")
    def _lsh(self) -> "DedupParams":
        minhash_only = {"ngram", "threshold", "verify", "num_buckets", "hashes_per_bucket", "num_perm", "seed"}
        if self.method == "exact" and self.model_fields_set & minhash_only:
            raise ValueError(f"{sorted(self.model_fields_set & minhash_only)} apply to method: minhash only")
        if (self.num_buckets is None) != (self.hashes_per_bucket is None):
            raise ValueError("give both num_buckets and hashes_per_bucket, or neither (derived from threshold)")
        return self

    def bands_rows(self) -> tuple[int, int]:
        """LSH bands and rows: given, or tuned for recall at `threshold`
        (false negatives weigh 0.98, false positives 0.02), since the exact
        Jaccard check removes the false positives afterwards."""
        if self.num_buckets is not None and self.hashes_per_bucket is not None:
            return self.num_buckets, self.hashes_per_bucket
        weight = 0.98 if self.verify else 0.5
        return lsh_params(self.threshold, self.num_perm, 1 - weight, weight)


@lru_cache(maxsize=64)
def lsh_params(threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows) with bands*rows <= num_perm minimising the weighted areas of
    false positives below `threshold` and false negatives above it under the
    LSH S-curve 1-(1-s^r)^b: datasketch's `_optimal_param`, re-stated with numpy
    integration so that datasketch stays a benchmark-only dependency."""
    s_lo = np.linspace(0.0, threshold, 200)
    s_hi = np.linspace(threshold, 1.0, 200)
    best, best_err = (1, 1), float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = np.trapezoid(1 - (1 - s_lo ** r) ** b, s_lo)
            fn = np.trapezoid((1 - s_hi ** r) ** b, s_hi)
            err = fp_weight * fp + fn_weight * fn
            if err < best_err:
                best, best_err = (b, r), err
    return best


def _exact_clusters(rows: list[dict], params: DedupParams) -> list[list[int]]:
    """Clusters of rows with the same normalised problem."""
    import hashlib

    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        key = " ".join(tokens(r.get(params.field) or ""))  # spacing-insensitive
        groups.setdefault(hashlib.sha256(key.encode()).hexdigest(), []).append(i)
    return [g for g in groups.values() if len(g) > 1]


def minhash_clusters(texts: list[str], params: DedupParams, work_dir: Path,
                     stats: dict | None = None) -> list[list[int]]:
    """Clusters (lists of indices into `texts`, each of size >= 2) found by
    datatrove's MinHash stages with the math-aware tokenizer, candidate pairs
    checked for their exact Jaccard similarity (`verify`)."""
    stats = {} if stats is None else stats
    from datatrove.data import Document
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupSignature,
    )
    from datatrove.utils.hashing import HashConfig
    from datatrove.utils.text import TextNormConfig
    from datatrove.utils.word_tokenizers import WordTokenizer

    class MathTokenizer(WordTokenizer):
        """curation.text's tokens: LaTeX spacing and `\\left`/`\\right` dropped,
        numbers kept whole, operators as tokens."""

        def word_tokenize(self, text: str) -> list[str]:
            return tokens(text)

        def sent_tokenize(self, text: str) -> list[str]:
            return [text]

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            return [(0, len(text))]

    class Signature(MinhashDedupSignature):
        def get_shingles(self, text: str) -> np.ndarray:
            toks = self.word_tokenizer.word_tokenize(text)
            n = min(self.config.n_grams, len(toks))
            grams = (" ".join(toks[i: i + n]) for i in range(len(toks) - n + 1)) if n else ()
            # encoded here: xxhash 4 hashes bytes only (datatrove passes str)
            return np.fromiter((self._hash_func(g.encode()) for g in grams), dtype=np.uint64).reshape((-1, 1))

    bands, rows_per_band = params.bands_rows()
    # Normalisation is the tokenizer's (math-aware), not datatrove's default,
    # which strips punctuation such as `+`, `=` and `^`.
    config = MinhashConfig(n_grams=params.ngram, num_buckets=bands, hashes_per_bucket=rows_per_band, seed=params.seed,
                           norm_config=TextNormConfig(lowercase=False, norm_whitespace=False, remove_punctuation=False,
                                                      norm_unicode_diacritics=False, norm_numbers=False),
                           hash_config=HashConfig(precision=64, hash_fc="xxhash"))
    sigs, buckets, clusters = (str(work_dir / d) for d in ("sigs", "buckets", "clusters"))
    docs = (Document(text=t, id=str(i)) for i, t in enumerate(texts))
    signature = Signature(sigs, config, language=MathTokenizer())
    signature.run(docs, rank=0, world_size=1)
    for b in range(bands):
        MinhashDedupBuckets(sigs, buckets, config=config).run(None, rank=b, world_size=bands)
    if params.verify:
        stats.update(verify_pairs(Path(buckets), lambda i: signature.get_shingles(texts[i]), params.threshold))
    MinhashDedupCluster(buckets, clusters, config=config, save_cluster_id=True).run(None, 0, 1)
    path = Path(clusters) / "000000.clusters"
    groups: dict[int, list[int]] = {}
    if path.exists():
        for doc, cluster in struct.iter_unpack("<2I", path.read_bytes()):
            groups.setdefault(cluster, []).append(doc)
    return [sorted(g) for g in groups.values() if len(g) > 1]


def verify_pairs(dups_dir: Path, shingles, threshold: float) -> dict[str, int]:
    """Keep only the candidate pairs (datatrove's `.dups` files, rewritten in
    place) whose exact Jaccard similarity of shingle sets reaches `threshold`.
    datatrove clusters every LSH candidate; this check is the part it lacks."""
    cache: dict[int, np.ndarray] = {}

    def shingle_set(i: int) -> np.ndarray:
        if i not in cache:
            cache[i] = np.unique(shingles(i))
        return cache[i]

    candidates = kept = 0
    for f in sorted(dups_dir.glob("*.dups")):
        data = f.read_bytes()
        out = bytearray()
        for f1, d1, f2, d2 in struct.iter_unpack("<4I", data):
            candidates += 1
            a, b = shingle_set(d1), shingle_set(d2)
            inter = np.intersect1d(a, b, assume_unique=True).size
            union = a.size + b.size - inter
            if union and inter / union >= threshold:
                kept += 1
                out += struct.pack("<4I", f1, d1, f2, d2)
        f.write_bytes(bytes(out))
    return {"candidate_pairs": candidates, "verified_pairs": kept}


def _minhash_clusters(rows: list[dict], params: DedupParams, ctx: OpContext, stats: dict) -> list[list[int]]:
    texts = [normalise(r.get(params.field) or "") for r in rows]
    ctx.stage_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=ctx.stage_dir, prefix="minhash-") as tmp:
        return minhash_clusters(texts, params, Path(tmp), stats)


def keep_rule(rows: list[dict], members: list[int]) -> int:
    """The member kept: the first with a gold answer, else the first (stage order)."""
    return next((i for i in members if (rows[i].get("answer") or "").strip()), members[0])


def _with_meta(row: dict, **fields) -> dict:
    meta = json.loads(row.get("meta") or "{}")
    meta.update(fields)
    return dict(row, meta=json.dumps(meta, sort_keys=True))


@register_op("dedup", version="2", params=DedupParams, kind="global")
def dedup(rows: list[dict], params: DedupParams, ctx: OpContext) -> OpResult:
    """Drop exact (normalised) or near-duplicate (MinHash) problems, keeping one per cluster."""
    if params.method == "exact":
        clusters = _exact_clusters(rows, params)
        reason, stats = "exact_duplicate", {}
    else:
        bands, r = params.bands_rows()
        reason, stats = "near_duplicate", {"lsh_bands": bands, "lsh_rows": r}
        clusters = _minhash_clusters(rows, params, ctx, stats)
    dup_of: dict[int, int] = {}
    for members in clusters:
        keep = keep_rule(rows, members)
        dup_of.update({i: keep for i in members if i != keep})
    keepers = set(dup_of.values())
    stats["clusters"] = len(clusters)
    kept, dropped = [], []
    for i, r in enumerate(rows):
        if i in dup_of:
            keeper = rows[dup_of[i]]["id"]
            dropped.append((_with_meta(r, duplicate_of=keeper, dedup_cluster=keeper), reason))
        elif i in keepers:
            kept.append(_with_meta(r, dedup_cluster=r["id"]))
        else:
            kept.append(r)
    stats["duplicates"] = len(dup_of)
    return OpResult(kept, dropped, stats)
