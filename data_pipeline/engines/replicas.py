"""Data parallelism for in-process engines: N replicas of one engine, each in
its own spawned process with its own devices.

`get_engine(..., data_parallel_size=N)` returns a `ReplicatedEngine` for the
engines that generate in-process (`vllm`, `transformers`). Replica i sees only
its group of `tensor_parallel_size` GPUs (CUDA_VISIBLE_DEVICES, set before the
engine is imported); on a CPU machine the replicas share the cores. Requests
are handed out in chunks as replicas become free, so a slow replica does not
hold the others back; each answer reaches `on_result` as its chunk returns.
Samples are seeded per request, so the answers do not depend on which replica
made them.

Written here because neither vLLM's offline `LLM` (one replica per process)
nor datatrove (tasks, not replicas sharing one request stream) offers it.
Replicas are spawned, not forked: CUDA cannot be initialised in a forked
child, and they must be started from a non-daemon process (the distill stage
runs in the main process when it replicates).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import traceback
from collections import Counter
from typing import Any

from data_pipeline.engines.base import Completion, Engine, GenerationRequest, OnResult, Sampling

REPLICABLE = {"vllm", "transformers"}


def _visible_gpus() -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d for d in env.split(",") if d.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no torch CUDA: CPU replicas
        return []


def replica_envs(replicas: int, tensor_parallel: int) -> list[dict[str, str]]:
    """The environment of each replica: its GPU group, or nothing on CPU."""
    from data_pipeline.engines.vllm_engine import gpu_group

    gpus = _visible_gpus()
    if not gpus:
        return [{} for _ in range(replicas)]
    return [{"CUDA_VISIBLE_DEVICES": ",".join(gpu_group(i, tensor_parallel, replicas, gpus))} for i in range(replicas)]


def _replica_main(index: int, name: str, model: str, revision: str | None, options: dict[str, Any],
                  env: dict[str, str], inbox, outbox) -> None:
    os.environ.update(env)
    try:
        from data_pipeline.engines.base import get_engine

        engine = get_engine(name, model, revision, **options)
        outbox.put(("ready", index, engine.identity()))
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises
        outbox.put(("error", index, traceback.format_exc()))
        return
    while True:
        job = inbox.get()
        if job is None:
            break
        chunk_id, requests, sampling = job
        try:
            before = Counter(engine.counters)
            outs = engine.generate(requests, sampling)
            delta = dict(Counter(engine.counters) - before)
            outbox.put(("done", index, (chunk_id, [c.to_dict() for c in outs], delta)))
        except BaseException:  # noqa: BLE001
            outbox.put(("error", index, traceback.format_exc()))
    engine.close()


class ReplicatedEngine(Engine):
    def __init__(self, name: str, model: str, revision: str | None, replicas: int, *, chunk_size: int = 64,
                 start_timeout_s: float = 1800, **options: Any):
        super().__init__(model, revision, **options)
        self.name = name
        self.replicas, self.chunk_size = replicas, chunk_size
        tp = int(options.get("tensor_parallel_size", 1))
        envs = replica_envs(replicas, tp)
        inner = {**options, "data_parallel_size": 1}
        ctx = mp.get_context("spawn")
        self._outbox = ctx.Queue()
        self._inboxes = [ctx.Queue() for _ in range(replicas)]
        self._procs = [ctx.Process(target=_replica_main, name=f"{name}-replica-{i}",
                                   args=(i, name, model, revision, inner, envs[i], self._inboxes[i], self._outbox))
                       for i in range(replicas)]
        for p in self._procs:
            p.start()
        idents = {}
        while len(idents) < replicas:
            kind, i, payload = self._get(start_timeout_s)
            if kind == "error":
                self.close()
                raise RuntimeError(f"{name} replica {i} failed to start:\n{payload}")
            idents[i] = payload
        self._identity = idents[0]

    def identity(self) -> dict[str, Any]:
        return self._identity

    def _get(self, timeout_s: float):
        waited = 0.0
        while True:
            try:
                return self._outbox.get(timeout=5)
            except queue.Empty:
                waited += 5
                dead = [p.name for p in self._procs if not p.is_alive()]
                if dead or waited >= timeout_s:
                    self.close()
                    raise RuntimeError(f"replicas {dead or 'all'} stopped answering")

    def generate(self, requests: list[GenerationRequest], sampling: Sampling,
                 on_result: OnResult | None = None) -> list[Completion]:
        out: list[Completion | None] = [None] * len(requests)
        chunks = [list(range(s, min(s + self.chunk_size, len(requests)))) for s in range(0, len(requests), self.chunk_size)]
        pending = list(range(len(chunks)))[::-1]
        busy = 0

        def feed(replica: int) -> None:
            nonlocal busy
            if pending:
                c = pending.pop()
                self._inboxes[replica].put((c, [requests[i] for i in chunks[c]], sampling))
                busy += 1

        for r in range(self.replicas):
            feed(r)
        while busy:
            kind, replica, payload = self._get(timeout_s=24 * 3600)
            if kind == "error":
                self.close()
                raise RuntimeError(f"{self.name} replica {replica} failed:\n{payload}")
            busy -= 1
            chunk_id, outs, delta = payload
            self.counters.update(delta)
            feed(replica)
            for i, c in zip(chunks[chunk_id], outs):
                out[i] = Completion(**c)
                if on_result:
                    on_result(i, out[i])
        return out  # type: ignore[return-value]

    def close(self) -> None:
        for q, p in zip(self._inboxes, self._procs):
            if p.is_alive():
                q.put(None)
        for p in self._procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
