"""The offline benchmark files, pinned: where each came from and its sha256.

`eval/benchmarks.py` reads its offline copies from the shared data folder
(`COMMONTHOUGHTS_SHARED_DATA`, default `<repo>/../shared/data`). Decontamination
fingerprints hash those rows, so validating a recipe needs them too. On a
machine without the folder (a CI runner, a fresh clone),
`python -m eval fetch-data [DEST]` downloads exactly these files from the
public GitHub repositories they were copied from, at the commits listed in the
shared folder's SOURCES.md, and checks each against its sha256 before putting
it in place. `FILES` lists every file `eval/benchmarks.py` reads, no more
(tests/test_benchmark_data.py fails when a benchmark reads a file that is
not listed here).

Hand-written on purpose: huggingface_hub and datasets download from the
Hugging Face Hub, while these mirrors are plain files in GitHub repositories
pinned by commit (raw.githubusercontent.com/<repo>/<commit>/<path>). Fetching
a URL with the standard library's urllib and checking a sha256 is all it takes,
so no dependency is added for it.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from data_pipeline.errors import PipelineError

DEFAULT_BASE_URL = "https://raw.githubusercontent.com"
TIMEOUT_S = 60.0
ATTEMPTS = 3
_CHUNK = 1 << 16


@dataclass(frozen=True)
class DataFile:
    path: str  # relative to the shared data folder
    repo: str  # GitHub owner/name
    commit: str
    source_path: str  # path in that repository
    sha256: str
    size: int  # bytes

    def url(self, base_url: str = DEFAULT_BASE_URL) -> str:
        return f"{base_url.rstrip('/')}/{self.repo}/{self.commit}/{self.source_path}"


_QWEN = ("QwenLM/Qwen2.5-Math", "a45202bd16f1ec06f433442dc1152d0074773465")
_EVALCHEMY = ("mlfoundations/evalchemy", "6ed674159b37f740f2353a86f596f49f6ac13c19")

# Sources from ../shared/data/SOURCES.md (its file table); hashes and sizes of
# the files there.
FILES: tuple[DataFile, ...] = (
    DataFile("gsm8k/test.jsonl", "openai/grade-school-math", "3101c7d5072418e28b9008a6636bde82a006892c",
             "grade_school_math/data/test.jsonl",
             "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14", 749738),
    # MATH-500: SOURCES.md took it from simpleRL-reason (byte-identical to evalchemy's math500.jsonl)
    DataFile("qwen25math-eval/math500/test.jsonl", "hkust-nlp/simpleRL-reason",
             "cf1c7858bfc145a27aa733e75d930d34f0d318a6", "examples/simplelr_math_eval/data/math500/test.jsonl",
             "35dc41080a3680858b27fa7e0533d2d547825316fc5dafe5d316f4ccc5a06132", 446564),
    DataFile("qwen25math-eval/aime24/test.jsonl", *_QWEN, "evaluation/data/aime24/test.jsonl",
             "af2b8bd2aa911b6333ad0df32f3ca05c7ae8ed10f1731f4372c8ae26990bf7ac", 156944),
    DataFile("evalchemy-bench/aime25/aime25.json", *_EVALCHEMY, "eval/chat_benchmarks/AIME25/data/aime25.json",
             "3505b87e8597a1b96821eef78f426382b7bff86c6a4a4cf19b57b24b968adfdb", 12649),
    DataFile("qwen25math-eval/amc23/test.jsonl", *_QWEN, "evaluation/data/amc23/test.jsonl",
             "43707e1ca784602d8479de24ee8ce36609dbebc46dd152b0b12a46611aa898a4", 27631),
    DataFile("qwen25math-eval/minerva_math/test.jsonl", *_QWEN, "evaluation/data/minerva_math/test.jsonl",
             "0e656b430d3a0a1dab6aa853f453ba3805e28e2cabe4fc72486a897cc09d8ba2", 247267),
    DataFile("qwen25math-eval/olympiadbench/test.jsonl", *_QWEN, "evaluation/data/olympiadbench/test.jsonl",
             "bb8c1e38a16ea9eacb77530315a674d883f267fbff79183effc53681b4fcc416", 1493870),
    DataFile("humaneval/HumanEval.jsonl.gz", "openai/human-eval", "6d43fb980f9fee3c892a914eda09951f772ad10d",
             "data/HumanEval.jsonl.gz",
             "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef", 44877),
    DataFile("evalchemy-bench/mbpp/mbpp.jsonl", *_EVALCHEMY, "eval/chat_benchmarks/MBPP/data/mbpp.jsonl",
             "ccf64ceae9c5403bf50a044cb6d505bfd2a2963ee58338ba268fd65beab92a9f", 563743),
)


class BenchmarkDataError(PipelineError):
    """A benchmark file could not be fetched, or what came was not the pinned file."""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(dest: str | Path) -> list[str]:
    """What is wrong with the benchmark files under `dest` (empty when every
    file is there with its pinned size and sha256)."""
    dest = Path(dest)
    problems = []
    for f in FILES:
        path = dest / f.path
        if not path.is_file():
            problems.append(f"{f.path}: missing")
        elif path.stat().st_size != f.size:
            problems.append(f"{f.path}: {path.stat().st_size} bytes, expected {f.size}")
        elif (got := file_sha256(path)) != f.sha256:
            problems.append(f"{f.path}: sha256 {got}, expected {f.sha256}")
    return problems


def _retryable(e: BaseException) -> bool:
    if isinstance(e, urllib.error.HTTPError):  # a 404 stays a 404
        return e.code in (408, 429) or e.code >= 500
    return isinstance(e, (urllib.error.URLError, OSError, http.client.HTTPException))


def _download(f: DataFile, url: str, target: Path, timeout: float, attempts: int) -> None:
    """Download `url` to a temporary file next to `target`, check its size and
    sha256, then move it into place (os.replace); on any failure nothing is left."""
    cap = max(4 * f.size, f.size + (1 << 20))  # read no further than this from a wrong file
    for attempt in range(1, attempts + 1):
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        try:
            h, n = hashlib.sha256(), 0
            with os.fdopen(fd, "wb") as out:
                req = urllib.request.Request(url, headers={"User-Agent": "commonthoughts-fetch-data"})
                with urllib.request.urlopen(req, timeout=timeout) as resp:
                    while (chunk := resp.read(_CHUNK)) and n <= cap:
                        if n + len(chunk) <= f.size:
                            out.write(chunk)
                        n += len(chunk)
                        h.update(chunk)
            got = h.hexdigest() if n <= cap else f"(not computed: more than {cap} bytes)"
            if n != f.size or got != f.sha256:
                raise BenchmarkDataError(
                    f"refusing {f.path} from {url}: expected sha256 {f.sha256} ({f.size} bytes), "
                    f"got sha256 {got} ({n} bytes); nothing was written")
            os.chmod(tmp, 0o644)  # mkstemp makes it private; the data is public
            os.replace(tmp, target)
            return
        except BenchmarkDataError:
            raise
        except Exception as e:
            if not _retryable(e):
                raise BenchmarkDataError(f"cannot download {f.path} from {url}: {e}") from None
            if attempt == attempts:
                raise BenchmarkDataError(f"cannot download {f.path} from {url} ({attempts} attempts): {e}") from None
            time.sleep(2 ** (attempt - 1))
        finally:
            Path(tmp).unlink(missing_ok=True)  # gone already when it was moved into place


def fetch(dest: str | Path, base_url: str = DEFAULT_BASE_URL, force: bool = False, *,
          timeout: float = TIMEOUT_S, attempts: int = ATTEMPTS,
          echo: Callable[[str], None] | None = None) -> list[tuple[DataFile, str]]:
    """Download every missing benchmark file into `dest` from
    `{base_url}/{repo}/{commit}/{path}`: (file, "fetched" | "replaced" |
    "skipped") per file. A file already there with the pinned sha256 is skipped
    (unless `force`); one with another sha256 is replaced. A download whose
    sha256 is not the pinned one raises BenchmarkDataError and leaves nothing."""
    dest = Path(dest)
    done: list[tuple[DataFile, str]] = []
    for f in FILES:
        target = dest / f.path
        present = target.is_file()
        if present and not force and target.stat().st_size == f.size and file_sha256(target) == f.sha256:
            done.append((f, "skipped"))
            if echo:
                echo(f"skipped  {f.path} (sha256 ok)")
            continue
        made = [p for p in reversed(target.parents) if not p.exists()]  # parents this call creates
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            _download(f, f.url(base_url), target, timeout, attempts)
        except BaseException:
            for p in reversed(made):  # leave no empty folders behind
                try:
                    p.rmdir()
                except OSError:
                    break
            raise
        action = "replaced" if present else "fetched"
        done.append((f, action))
        if echo:
            echo(f"{action:<8} {f.path} ({f.size} bytes) from {f.url(base_url)}")
    return done


def fetch_command(dest: str | Path | None = None, base_url: str | None = None, force: bool = False,
                  echo: Callable[[str], None] = print) -> None:
    """`python -m eval fetch-data [DEST]`: fetch, then check every file."""
    base_url = base_url or DEFAULT_BASE_URL
    if dest is None:
        from eval.benchmarks import shared_data_dir

        dest = shared_data_dir()
    dest = Path(dest)
    done = fetch(dest, base_url, force, echo=echo)
    problems = verify(dest)
    if problems:
        raise BenchmarkDataError(f"benchmark files under {dest} do not match the pinned ones: " + "; ".join(problems))
    n = sum(1 for _, a in done if a != "skipped")
    echo(f"{n} fetched, {len(done) - n} already there: {len(FILES)} benchmark files verified in {dest}")
