"""The endpoint engine against a real `transformers serve` on loopback (a tiny
random Qwen2 made from a config), behind a proxy that counts what the server
receives, injects faults, and kills the client at chosen requests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from data_pipeline.cache import StageCache
from data_pipeline.engines import GenerationRequest, Sampling, get_engine
from data_pipeline.engines.endpoint import EndpointEngine
from data_pipeline.engines.local_server import TransformersServe, build_tiny_chat_model
from data_pipeline.errors import PipelineError
from data_pipeline.pipeline import run_data
from data_pipeline.recipe import load_recipe
from data_pipeline.registries import load_plugins
from teacher_proxy import TeacherProxy

load_plugins()

pytest.importorskip("fastapi", reason="needs transformers[serving] (the dev extra)")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("serve")
    model = build_tiny_chat_model(d / "tiny")
    with TransformersServe(model, log_path=d / "serve.log") as s:
        yield s


def _requests(n: int = 6, samples: int = 1) -> list[GenerationRequest]:
    return [GenerationRequest.from_messages([{"role": "system", "content": "Be brief."},
                                             {"role": "user", "content": f"What is {i} + {i}?"}], s, seed=100 * i + s)
            for i in range(n) for s in range(samples)]


def test_chat_and_completions_endpoints(server):
    greedy = Sampling(temperature=0.0, max_tokens=6)
    chat = get_engine("endpoint", server.model_dir, base_url=server.base_url, concurrency=3)
    got: dict[int, str] = {}
    out = chat.generate(_requests(), greedy, on_result=lambda i, c: got.setdefault(i, c.text))
    assert [c.finish_reason for c in out] == ["length"] * 6  # a random model does not stop in 6 tokens
    assert all(c.completion_tokens == 6 and c.prompt_tokens > 10 and c.text for c in out)
    assert got == {i: c.text for i, c in enumerate(out)}  # each handed over as it finished
    again = chat.generate(_requests(), greedy)
    assert [c.text for c in again] == [c.text for c in out]  # greedy: reproducible
    assert chat.counters["attempts"] == 12 and not any(k.startswith("errors/") for k in chat.counters)

    plain = get_engine("endpoint", server.model_dir, base_url=server.base_url, api="completions")
    comp = plain.generate(_requests(2), greedy)
    assert all(c.finish_reason == "length" and c.completion_tokens == 6 for c in comp)
    assert plain.identity() != chat.identity()  # a different rendering: never the same cache entry


def test_n_samples_fall_back_to_one_request_per_sample(server):
    """transformers serve ignores `n`: the missing samples are asked one by one."""
    eng = get_engine("endpoint", server.model_dir, base_url=server.base_url, use_n=True, concurrency=2)
    out = eng.generate(_requests(3, samples=3), Sampling(temperature=0.0, max_tokens=4))
    assert all(c.finish_reason == "length" and c.text for c in out)
    assert eng.counters["n_ignored"] == 3 and eng.counters["attempts"] == 3 * 3


def test_reasoning_content_is_kept_apart():
    """A vLLM-style answer with a reasoning parser: reasoning and answer separate."""
    eng = EndpointEngine("m", base_url="http://127.0.0.1:9/v1")
    [c] = eng._parse({"choices": [{"index": 0, "finish_reason": "stop",
                                   "message": {"role": "assistant", "content": "42", "reasoning_content": "6*7"}}],
                      "usage": {"prompt_tokens": 9, "completion_tokens": 5}})
    assert (c.text, c.reasoning, c.prompt_tokens, c.completion_tokens) == ("42", "6*7", 9, 5)
    two = eng._parse({"choices": [{"index": 1, "finish_reason": "length", "message": {"content": "bbbb"}},
                                  {"index": 0, "finish_reason": "stop", "message": {"content": "a"}}],
                      "usage": {"prompt_tokens": 9, "completion_tokens": 10}})
    assert [c.text for c in two] == ["a", "bbbb"] and sum(c.completion_tokens for c in two) == 10


def test_api_key_comes_from_the_environment_and_is_never_stored(server, workdir, monkeypatch):
    monkeypatch.setenv("CT_TEST_TEACHER_KEY", "sk-very-secret-123")
    with TeacherProxy(server.base_url) as proxy:
        recipe = _recipe(workdir, proxy.base_url, server.model_dir, count=3, runtime={"api_key_env": "CT_TEST_TEACHER_KEY"})
        cache = StageCache(workdir / "cache")
        run_data(load_recipe(recipe), cache, echo=lambda *a, **k: None)
    assert proxy.headers and all(h.get("Authorization") == "Bearer sk-very-secret-123" for h in proxy.headers)
    for f in (workdir / "cache").rglob("*"):
        if f.is_file():
            assert b"sk-very-secret-123" not in f.read_bytes(), f
    monkeypatch.delenv("CT_TEST_TEACHER_KEY")
    with pytest.raises(PipelineError, match="CT_TEST_TEACHER_KEY"):  # at start, before any stage runs
        run_data(load_recipe(_recipe(workdir, proxy.base_url, server.model_dir, count=4, runtime={"api_key_env": "CT_TEST_TEACHER_KEY"},
                                     name="other")), StageCache(workdir / "cache2"), echo=lambda *a, **k: None)
    assert not (workdir / "cache2" / "stages").exists()


def _recipe(workdir: Path, base_url: str, model: str, *, count: int = 12, samples: int = 2, name: str = "endpoint",
            runtime: dict | None = None, extra: dict | None = None, execution: dict | None = None) -> Path:
    distill = {"engine": "endpoint", "model": model, "samples": samples,
               "sampling": {"temperature": 0.0, "max_tokens": 6},
               "runtime": {"base_url": base_url, "concurrency": 1, **(runtime or {})}, **(extra or {})}
    recipe = {
        "name": name, "version": "1.0.0",
        "data": {"sources": {"arith": {"uri": "nano://arith?levels=1-2&families=add", "count": count, "seed": 5}},
                 **({"execution": execution} if execution else {}),
                 "stages": {"dedup": {"method": "exact"}, "distill": distill, "verify": {"keep": "all"}, "format": {}}},
        "sft": {"model": {"init": "nano-2m"}, "args": {"max_steps": 1, "max_length": 128}},
        "eval": {"benchmarks": ["nano-bench"]},
    }
    d = workdir / "recipes"
    d.mkdir(exist_ok=True)
    path = d / f"{name}.yaml"
    path.write_text(json.dumps(recipe))  # JSON is YAML
    return path


def test_faults_are_retried_counted_and_failures_kept(server, workdir):
    """The server answers 500 and 429 and drops connections for a share of
    requests; some keep failing. The run completes and its counts match."""
    def plan(key: str, attempt: int) -> str | None:
        h = int(key, 16) % 8
        if h == 0:
            return "500"  # always: fails for good after max_retries
        if h == 1 and attempt == 0:
            return "429"
        if h == 2 and attempt == 0:
            return "drop"
        if h == 3 and attempt < 2:
            return "500"
        return None

    with TeacherProxy(server.base_url, plan) as proxy:
        recipe = _recipe(workdir, proxy.base_url, server.model_dir, count=16, extra={"max_failed_fraction": 1.0},
                         runtime={"concurrency": 4, "max_retries": 2, "backoff_s": 0.01})
        result = run_data(load_recipe(recipe), StageCache(workdir / "cache"), echo=lambda *a, **k: None)
    stats = {s.stage.id: s for s in result.stages}["distill"].stats["extra"]
    permanent = sum(1 for k in proxy.attempts if int(k, 16) % 8 == 0)
    assert permanent > 0 and proxy.injected["429"] > 0 and proxy.injected["drop"] > 0
    assert stats["errors/http_500"] == proxy.injected["500"]
    assert stats["errors/http_429"] == proxy.injected["429"]
    assert stats["errors/connection"] == proxy.injected["drop"]
    assert stats["failed/http_500"] == permanent == stats["finish/error"]
    assert stats["attempts"] == sum(proxy.attempts.values())
    assert stats["requests"] == stats["requests_new"] == len(proxy.attempts)  # one key per request (deduplicated)
    fp = {s.stage.id: s.stage.fingerprint for s in result.stages}["distill"]
    rows = pq.read_table(workdir / "cache" / "stages" / fp / "data")
    errors = [x for r in rows.column("responses").to_pylist() for x in r if x["finish_reason"] == "error"]
    assert len(errors) == permanent and all("http_500 after 3 attempts" in x["error"] and not x["selected"] for x in errors)


def test_a_slow_answer_times_out_and_is_retried(server):
    slow = {}

    def plan(key: str, attempt: int) -> str | None:
        if attempt == 0 and not slow:
            slow[key] = True
            return "slow:2"
        return None

    with TeacherProxy(server.base_url, plan) as proxy:
        eng = get_engine("endpoint", server.model_dir, base_url=proxy.base_url, timeout_s=0.5, backoff_s=0.0)
        out = eng.generate(_requests(3), Sampling(temperature=0.0, max_tokens=4))
    assert all(c.finish_reason == "length" for c in out)
    assert eng.counters["errors/timeout"] == proxy.injected["slow"] == 1 and eng.counters["attempts"] == 4


def test_too_many_failures_fail_the_stage_and_a_rerun_sends_only_those(server, workdir):
    failing = {"on": True}

    def plan(key: str, attempt: int) -> str | None:
        return "503" if failing["on"] and int(key, 16) % 4 == 0 else None

    with TeacherProxy(server.base_url, plan) as proxy:
        recipe = _recipe(workdir, proxy.base_url, server.model_dir, count=8, runtime={"max_retries": 1, "backoff_s": 0.0})
        with pytest.raises(PipelineError, match=r"teacher requests failed \(http_503: \d+\).*rerun"):
            run_data(load_recipe(recipe), StageCache(workdir / "cache"), echo=lambda *a, **k: None)
        answered = dict(proxy.answered)
        failing["on"] = False
        run_data(load_recipe(recipe), StageCache(workdir / "cache"), echo=lambda *a, **k: None)
    assert max(proxy.answered.values()) == 1  # nothing answered was asked again
    assert set(proxy.answered) - set(answered) == {k for k in proxy.attempts if int(k, 16) % 4 == 0}


def _published(registry: Path) -> dict[str, bytes]:
    files = sorted(p for p in registry.rglob("*.parquet") if ".git" not in p.parts and ".snapshots" not in p.parts)
    return {str(p.relative_to(registry)): p.read_bytes() for p in files}


def _run(workdir: Path, recipe: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "data_pipeline", "run", str(recipe)], cwd=workdir, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


# One request in flight at a time (concurrency 1, one stage task at a time):
# then no answer can be lost at a kill. With more in flight, the requests in
# flight at the kill (at most concurrency x workers) are sent again: the server
# did the work but its answer never arrived.
ONE_AT_A_TIME = {"tasks": 2, "workers": 1}


def test_kill_9_at_three_points_sends_no_request_twice_and_loses_none(server, tmp_path):
    """kill -9 the run when its 1st request arrives, again half-way, again at
    its last request; the fourth run finishes. Counted at the server: every
    request answered exactly once; the published dataset is byte-identical to
    an uninterrupted run's."""
    def env_for(root: Path) -> dict:
        return {**os.environ, "COMMONTHOUGHTS_CACHE": str(root / "cache"),
                "COMMONTHOUGHTS_REGISTRY": str(root / "registry")}

    with TeacherProxy(server.base_url) as clean:
        (tmp_path / "a").mkdir()
        recipe = _recipe(tmp_path / "a", clean.base_url, server.model_dir, execution=ONE_AT_A_TIME)
        p = _run(tmp_path / "a", recipe, env_for(tmp_path / "a"))
        assert p.wait(timeout=300) == 0, p.stderr.read().decode()
    total = len(clean.answered)
    assert total >= 16 and set(clean.answered.values()) == {1}

    with TeacherProxy(server.base_url) as proxy:
        (tmp_path / "b").mkdir()
        recipe = _recipe(tmp_path / "b", proxy.base_url, server.model_dir, execution=ONE_AT_A_TIME)
        env = env_for(tmp_path / "b")
        for point in ("first", "middle", "last"):
            remaining = total - len(proxy.answered)
            at = {"first": 1, "middle": remaining // 2, "last": remaining}[point]
            p = _run(tmp_path / "b", recipe, env)
            proxy.kill_at(at, p.pid)
            assert p.wait(timeout=300) == -9, f"{point}: {p.stderr.read().decode()[-2000:]}"
            assert proxy.killed.is_set()
        assert len(proxy.answered) == total - 1  # killed at its last request
        p = _run(tmp_path / "b", recipe, env)
        assert p.wait(timeout=300) == 0, p.stderr.read().decode()
    assert set(proxy.answered.values()) == {1}, "a request was answered twice"
    assert set(proxy.answered) == set(clean.answered), "requests lost or different"
    a, b = _published(tmp_path / "a" / "registry"), _published(tmp_path / "b" / "registry")
    assert a and a == b
