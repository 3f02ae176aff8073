"""The benchmark registry: what is asked, how it is asked, and what counts as right.

A `Benchmark` is versioned as a whole: its rows, its prompt template and its
answer type. Change any of them and bump `version`, so that results carrying
different versions are never compared as if they were the same test. Results
also record the sha256 of the loaded rows and of the template, which catches a
change that forgot the bump.

Public benchmarks keep their Hub id and pinned revision (`hub_id`, `revision`);
on machines without Hub access they are read from the offline copies in the
shared data folder (`COMMONTHOUGHTS_SHARED_DATA`, default `<repo>/../shared/data`,
see its SOURCES.md). Decontamination reads `benchmark_problems(name)`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from data_pipeline.errors import PipelineError
# the name registry lets `data_pipeline` validate recipes' benchmark names
from data_pipeline.registries import register_benchmark_name

# The usual reasoning-model instruction (DeepSeek-R1, Qwen2.5-Math); `{problem}` is
# replaced literally (no str.format), so templates may contain braces.
BOXED_TEMPLATE = "{problem}\n\nPlease reason step by step, and put your final answer within \\boxed{}."
PLACEHOLDER = "{problem}"


ANSWER_TYPES = ("math", "multiple_choice", "code")


@dataclass(frozen=True)
class Benchmark:
    """One benchmark. Rows have `id`, `problem`, `answer` and per answer type:
    math: `answer` is the gold answer; multiple_choice: `choices` (option texts)
    and `answer` the correct option's text (the harness shuffles the options
    per question from the seed and renders them lettered); code: `answer` is a
    reference program and `tests` the tests it passes (assert statements, a
    HumanEval `check` function with `entry_point`, or stdin/stdout cases)."""

    name: str
    version: str
    load: Callable[[], list[dict[str, Any]]]  # rows with "id", "problem", "answer"
    prompt_template: str
    answer_type: str = "math"
    default_samples: int = 1
    ks: tuple[int, ...] = (1,)
    hub_id: str | None = None
    revision: str | None = None
    description: str = ""
    offline_path: str | None = field(default=None, compare=False)  # under the shared data folder

    def __post_init__(self) -> None:
        if PLACEHOLDER not in self.prompt_template:
            raise ValueError(f"benchmark {self.name!r}: prompt_template lacks {PLACEHOLDER}")
        if self.answer_type not in ANSWER_TYPES:
            raise ValueError(f"benchmark {self.name!r}: answer_type must be one of {ANSWER_TYPES}")
        object.__setattr__(self, "ks", tuple(sorted(set(int(k) for k in self.ks))))

    def render(self, problem: str) -> str:
        """The user message for one problem."""
        return self.prompt_template.replace(PLACEHOLDER, problem)

    def rows(self) -> list[dict[str, Any]]:
        """The benchmark's rows, checked (ids unique, fields present)."""
        rows = self.load()
        seen: set[str] = set()
        for i, row in enumerate(rows):
            missing = [k for k in ("id", "problem", "answer") if row.get(k) in (None, "")]
            if missing:
                raise ValueError(f"benchmark {self.name!r}: row {i} lacks {missing}")
            if row["id"] in seen:
                raise ValueError(f"benchmark {self.name!r}: duplicate id {row['id']!r}")
            seen.add(row["id"])
        return rows

    def to_dict(self) -> dict[str, Any]:
        """The definition as recorded in results (everything but the loader)."""
        return {
            "name": self.name,
            "version": self.version,
            "answer_type": self.answer_type,
            "prompt_template": self.prompt_template,
            "prompt_sha256": hashlib.sha256(self.prompt_template.encode()).hexdigest(),
            "hub_id": self.hub_id,
            "revision": self.revision,
            "offline": self.offline_path is not None,
        }


def data_sha256(rows: list[dict[str, Any]]) -> str:
    """Content hash of the rows that matter for scoring: (id, problem, answer)."""
    payload = [[str(r["id"]), str(r["problem"]), str(r["answer"])] for r in rows]
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()).hexdigest()


BENCHMARKS: dict[str, Benchmark] = {}


def register_benchmark(benchmark: Benchmark) -> Benchmark:
    """Add (or replace) a benchmark in the registry."""
    BENCHMARKS[benchmark.name] = benchmark
    register_benchmark_name(benchmark.name)
    return benchmark


def get_benchmark(name: str) -> Benchmark:
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise KeyError(f"unknown benchmark {name!r}; known: {sorted(BENCHMARKS)}") from None


def benchmark_problems(name: str) -> list[str]:
    """The problem texts of a benchmark (for decontamination)."""
    return [row["problem"] for row in get_benchmark(name).rows()]


def benchmark_texts(name: str, field: str) -> list[tuple[str, str]]:
    """(row id, text) of one field of a benchmark's rows where present:
    `problem`, `answer` or `solution` (decontamination)."""
    return [(str(row["id"]), str(row[field])) for row in get_benchmark(name).rows() if row.get(field)]


# ------------------------------------------------------------------ offline data


def shared_data_dir() -> Path:
    """`COMMONTHOUGHTS_SHARED_DATA`, else `shared/data` next to the repository."""
    env = os.environ.get("COMMONTHOUGHTS_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"


class BenchmarkDataMissing(PipelineError, FileNotFoundError):
    """A benchmark's data is not on this machine. A PipelineError, so the CLIs
    print its one-line message (no traceback); a FileNotFoundError for callers
    that catch that."""


def _read_jsonl(relative: str) -> list[dict[str, Any]]:
    import gzip

    path = shared_data_dir() / relative
    if not path.is_file():
        raise BenchmarkDataMissing(
            f"offline benchmark file {path} not found: run `python -m eval fetch-data` to download the pinned "
            f"benchmark files there (eval/benchmark_data.py), or set COMMONTHOUGHTS_SHARED_DATA to a folder that "
            f"has them"
        )
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _hub_only(name: str, hub_id: str) -> Callable[[], list[dict[str, Any]]]:
    def load() -> list[dict[str, Any]]:
        raise BenchmarkDataMissing(
            f"benchmark {name!r} has no offline mirror: it is read from the Hub ({hub_id}) on a machine with access")
    return load


# ------------------------------------------------------------------ definitions

GSM8K_FILE = "gsm8k/test.jsonl"
MATH500_FILE = "qwen25math-eval/math500/test.jsonl"
AIME24_FILE = "qwen25math-eval/aime24/test.jsonl"
AIME25_FILE = "evalchemy-bench/aime25/aime25.json"  # JSON lines despite the name
AMC23_FILE = "qwen25math-eval/amc23/test.jsonl"
MINERVA_FILE = "qwen25math-eval/minerva_math/test.jsonl"
OLYMPIAD_FILE = "qwen25math-eval/olympiadbench/test.jsonl"
HUMANEVAL_FILE = "humaneval/HumanEval.jsonl.gz"
MBPP_FILE = "evalchemy-bench/mbpp/mbpp.jsonl"


def _load_nano_bench() -> list[dict[str, Any]]:
    from data_pipeline.nano.tasks import nano_bench

    return nano_bench()


def gsm8k_gold(solution: str) -> str:
    """GSM8K's final answer: the text after `####`, thousands separators removed."""
    if "####" not in solution:
        raise ValueError("GSM8K solution without '####'")
    return solution.split("####")[-1].strip().replace(",", "")


def _load_gsm8k() -> list[dict[str, Any]]:
    return [
        {"id": f"gsm8k/test/{i:04d}", "problem": r["question"], "answer": gsm8k_gold(r["answer"]),
         "solution": r["answer"].split("####")[0].strip()}
        for i, r in enumerate(_read_jsonl(GSM8K_FILE))
    ]


def _load_math500() -> list[dict[str, Any]]:
    return [
        {
            "id": r["unique_id"],
            "problem": r["problem"],
            "answer": r["answer"],
            "solution": r["solution"],
            "subject": r["subject"],
            "level": r["level"],
        }
        for r in _read_jsonl(MATH500_FILE)
    ]


def _load_aime24() -> list[dict[str, Any]]:
    return [{"id": f"aime24/{r['id']}", "problem": r["problem"], "answer": str(r["answer"]), "solution": r.get("solution")}
            for r in _read_jsonl(AIME24_FILE)]


def _load_aime25() -> list[dict[str, Any]]:
    return [{"id": f"aime25/{r['id']}", "problem": r["problem"], "answer": str(r["answer"])}
            for r in _read_jsonl(AIME25_FILE)]


def _load_amc23() -> list[dict[str, Any]]:
    def number(x: Any) -> str:  # the file stores 27 as 27.0
        return str(int(x)) if isinstance(x, float) and x.is_integer() else str(x)

    return [{"id": f"amc23/{r['id']}", "problem": r.get("problem") or r["question"], "answer": number(r["answer"])}
            for r in _read_jsonl(AMC23_FILE)]


register_benchmark(
    Benchmark(
        name="nano-bench",
        version="1",
        load=_load_nano_bench,
        prompt_template=PLACEHOLDER,
        default_samples=4,
        ks=(1, 2, 4),
        description="The nano track's held-out arithmetic benchmark (data_pipeline.nano.tasks.nano_bench).",
    )
)

register_benchmark(
    Benchmark(
        name="gsm8k",
        version="1",
        load=_load_gsm8k,
        prompt_template=BOXED_TEMPLATE,
        default_samples=1,
        ks=(1,),
        hub_id="openai/gsm8k",  # config "main", split "test"
        revision="740312add88f781978c0658806c59bc2815b9866",
        offline_path=GSM8K_FILE,
        description="GSM8K test (1319); gold is the number after '####'.",
    )
)

register_benchmark(
    Benchmark(
        name="math500",
        version="1",
        load=_load_math500,
        prompt_template=BOXED_TEMPLATE,
        default_samples=4,
        ks=(1, 4),
        hub_id="HuggingFaceH4/MATH-500",  # split "test"
        revision="6e4ed1a2a79af7d8630a6b768ec859cb5af4d3be",
        offline_path=MATH500_FILE,
        description="MATH-500 (the PRM800K test subset of MATH); gold is the `answer` field.",
    )
)

register_benchmark(
    Benchmark(
        name="aime24",
        version="1",
        load=_load_aime24,
        prompt_template=BOXED_TEMPLATE,
        default_samples=16,
        ks=(1, 4, 16),
        hub_id="HuggingFaceH4/aime_2024",  # split "train"; revision to pin on a machine with Hub access
        offline_path=AIME24_FILE,
        description="AIME 2024 I and II (30); integer answers 0-999.",
    )
)

register_benchmark(
    Benchmark(
        name="aime25",
        version="1",
        load=_load_aime25,
        prompt_template=BOXED_TEMPLATE,
        default_samples=16,
        ks=(1, 4, 16),
        hub_id="opencompass/AIME2025",  # configs AIME2025-I, AIME2025-II; revision to pin with Hub access
        offline_path=AIME25_FILE,
        description="AIME 2025 I and II (30); integer answers 0-999.",
    )
)

register_benchmark(
    Benchmark(
        name="amc23",
        version="1",
        load=_load_amc23,
        prompt_template=BOXED_TEMPLATE,
        default_samples=16,
        ks=(1, 4, 16),
        hub_id="math-ai/amc23",  # split "test"; revision to pin with Hub access
        offline_path=AMC23_FILE,
        description="AMC 2023 (40 problems of AMC 12A/12B as used by Qwen2.5-Math); numeric answers.",
    )
)


def _load_minerva() -> list[dict[str, Any]]:
    from eval.scoring import last_boxed

    return [{"id": f"minerva/{r['idx']}", "problem": r["problem"], "answer": last_boxed(r["solution"]),
             "solution": r["solution"], "type": r["type"]} for r in _read_jsonl(MINERVA_FILE)]


def _load_olympiad() -> list[dict[str, Any]]:
    rows = []
    for r in _read_jsonl(OLYMPIAD_FILE):
        answer = ", ".join(a.strip().strip("$").strip() for a in r["final_answer"])
        problem = r["question"] if not r.get("context") else f"{r['context']}\n\n{r['question']}"
        rows.append({"id": f"olympiadbench/{r['id']}", "problem": problem, "answer": answer,
                     "solution": "\n".join(r["solution"]), "unit": r.get("unit"), "answer_kind": r["answer_type"]})
    return rows


CODE_TEMPLATE = ("{problem}\n\nWrite the complete solution in Python in a single ```python code block.")


def _load_humaneval() -> list[dict[str, Any]]:
    return [{"id": r["task_id"], "problem": r["prompt"], "answer": r["prompt"] + r["canonical_solution"],
             "tests": r["test"], "entry_point": r["entry_point"]} for r in _read_jsonl(HUMANEVAL_FILE)]


def _load_mbpp() -> list[dict[str, Any]]:
    # The test split: task ids 11-510 (Austin et al. 2021); the problem shows
    # the tests, as the original prompt does, so the function name is known.
    rows = []
    for r in _read_jsonl(MBPP_FILE):
        if not 11 <= int(r["task_id"]) <= 510:
            continue
        tests = list(r["test_list"])
        problem = r["text"] + "\nYour code should pass these tests:\n\n" + "\n".join(tests)
        rows.append({"id": f"mbpp/{r['task_id']}", "problem": problem, "answer": r["code"], "tests": tests,
                     "setup": r.get("test_setup_code") or ""})
    return rows


register_benchmark(
    Benchmark(
        name="minerva_math",
        version="1",
        load=_load_minerva,
        prompt_template=BOXED_TEMPLATE,
        default_samples=4,
        ks=(1, 4),
        hub_id="math-ai/minervamath",  # revision to pin with Hub access
        offline_path=MINERVA_FILE,
        description="Minerva math (272 MIT OCW science problems); gold is the last \\boxed{} of the solution.",
    )
)

register_benchmark(
    Benchmark(
        name="olympiadbench",
        version="1",
        load=_load_olympiad,
        prompt_template=BOXED_TEMPLATE,
        default_samples=4,
        ks=(1, 4),
        hub_id="Hothan/OlympiadBench",  # OE_TO_maths_en_COMP; revision to pin with Hub access
        offline_path=OLYMPIAD_FILE,
        description="OlympiadBench, English text-only math competition problems (675); multiple answers joined by ', '.",
    )
)

register_benchmark(
    Benchmark(
        name="humaneval",
        version="1",
        load=_load_humaneval,
        prompt_template=CODE_TEMPLATE,
        answer_type="code",
        default_samples=4,
        ks=(1, 4),
        hub_id="openai/openai_humaneval",  # revision to pin with Hub access
        offline_path=HUMANEVAL_FILE,
        description="HumanEval (164): the program must pass the task's `check` function in the sandbox.",
    )
)

register_benchmark(
    Benchmark(
        name="mbpp",
        version="1",
        load=_load_mbpp,
        prompt_template=CODE_TEMPLATE,
        answer_type="code",
        default_samples=4,
        ks=(1, 4),
        hub_id="google-research-datasets/mbpp",  # config "full", split "test"; revision to pin with Hub access
        offline_path=MBPP_FILE,
        description="MBPP test split (500, task ids 11-510): the program must pass the task's asserts.",
    )
)

MC_TEMPLATE = ("{problem}\n\nAnswer with the letter of the correct option; put only the letter in \\boxed{}.")

register_benchmark(
    Benchmark(
        name="gpqa_diamond",
        version="1",
        load=_hub_only("gpqa_diamond", "Idavidrein/gpqa"),
        prompt_template=MC_TEMPLATE,
        answer_type="multiple_choice",
        default_samples=8,
        ks=(1, 8),
        hub_id="Idavidrein/gpqa",  # config gpqa_diamond (gated); options shuffled per question from the seed
        description="GPQA Diamond (198 graduate-level science questions, 4 options). Hub only.",
    )
)

register_benchmark(
    Benchmark(
        name="livecodebench",
        version="1",
        load=_hub_only("livecodebench", "livecodebench/code_generation_lite"),
        prompt_template=CODE_TEMPLATE,
        answer_type="code",
        default_samples=4,
        ks=(1, 4),
        hub_id="livecodebench/code_generation_lite",  # version_tag release_v5; problems dated 2024-08-01..2025-02-01
        description=("LiveCodeBench code generation, release window 2024-08 to 2025-02 (after the usual teachers' "
                     "cut-offs); stdin/stdout and functional tests. Hub only."),
    )
)
