"""Offline batched generation with vLLM on GPUs (the `gpu` extra).

vLLM's `LLM.chat` renders each conversation with the model's chat template and
schedules the whole batch itself (continuous batching, prefix caching); each
request carries its own `seed`, so a sample depends on its request only.

Options (distill `runtime`, not hashed): `tensor_parallel_size` (1),
`data_parallel_size` (1), `gpu_memory_utilization` (0.9), `enforce_eager`,
`batch_size` (requests per `LLM.chat` call; results are stored after each, 512).
Options that change the answers (hashed, `engine_options`): `dtype` ("auto"),
`max_model_len`, `chat_template_kwargs`.

Data parallelism: the stage's tasks are the replicas. Run the distill stage
with `execution.workers` = data_parallel_size; each worker process takes its
own group of `tensor_parallel_size` GPUs (`gpu_group`), set in
CUDA_VISIBLE_DEVICES before vLLM is imported. On a cluster, the Slurm or Ray
executor gives each task its own GPUs instead.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
from typing import Any

from data_pipeline.engines.base import Completion, Engine, GenerationRequest, OnResult, Sampling, register_engine

GPU_EXTRA_HINT = "install the GPU extra on a CUDA machine: pip install 'commonthoughts[gpu]'"


def gpu_group(slot: int, tensor_parallel: int, data_parallel: int, visible: list[str]) -> list[str]:
    """The GPUs of data-parallel replica `slot % data_parallel`: a contiguous
    group of `tensor_parallel` devices out of `visible`."""
    need = tensor_parallel * data_parallel
    if len(visible) < need:
        raise ValueError(f"vllm engine: tensor_parallel_size={tensor_parallel} x data_parallel_size={data_parallel} "
                         f"needs {need} GPUs, {len(visible)} visible")
    replica = slot % data_parallel
    return visible[replica * tensor_parallel: (replica + 1) * tensor_parallel]


def _worker_slot() -> int:
    """0-based index of this process among the stage's pool workers (0 in the main process)."""
    ident = multiprocessing.current_process()._identity  # set by multiprocessing pools: (1,), (2,), ...
    return ident[0] - 1 if ident else 0


def _visible_gpus() -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d for d in env.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


@register_engine("vllm")
class VLLMEngine(Engine):
    def __init__(self, model: str, revision: str | None = None, **options: Any):
        super().__init__(model, revision=revision, **options)
        self.preflight(options)
        tp = int(options.get("tensor_parallel_size", 1))
        dp = int(options.get("data_parallel_size", 1))
        self.batch_size = int(options.get("batch_size", 512))
        self.chat_template_kwargs = options.get("chat_template_kwargs") or {}
        if dp > 1:
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_group(_worker_slot(), tp, dp, _visible_gpus()))
        import vllm  # after CUDA_VISIBLE_DEVICES: vLLM reads it at import

        self._vllm = vllm
        kwargs: dict[str, Any] = {"tensor_parallel_size": tp, "dtype": options.get("dtype", "auto"),
                                  "gpu_memory_utilization": float(options.get("gpu_memory_utilization", 0.9)),
                                  "revision": revision, "seed": 0}
        if options.get("max_model_len"):
            kwargs["max_model_len"] = int(options["max_model_len"])
        if options.get("enforce_eager"):
            kwargs["enforce_eager"] = True
        self.llm = vllm.LLM(model=model, **kwargs)
        self._dtype = str(self.llm.llm_engine.model_config.dtype).removeprefix("torch.")

    @classmethod
    def preflight(cls, options: dict[str, Any]) -> None:
        if importlib.util.find_spec("vllm") is None:
            raise ValueError(f"the vllm engine needs vllm, which is not installed here: {GPU_EXTRA_HINT}")

    def identity(self) -> dict[str, Any]:
        ident = {**super().identity(), "dtype": self._dtype, "max_model_len": self.options.get("max_model_len")}
        if self.chat_template_kwargs:
            ident["chat_template_kwargs"] = self.chat_template_kwargs
        return ident

    def generate(self, requests: list[GenerationRequest], sampling: Sampling,
                 on_result: OnResult | None = None) -> list[Completion]:
        out: list[Completion] = []
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start: start + self.batch_size]
            params = [self._vllm.SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p,
                                                max_tokens=sampling.max_tokens, seed=r.seed % 2**63, n=1)
                      for r in chunk]
            results = self.llm.chat([r.messages_as_dicts() for r in chunk], sampling_params=params, use_tqdm=False,
                                    chat_template_kwargs=self.chat_template_kwargs or None)
            self.counters["attempts"] += len(chunk)
            for offset, res in enumerate(results):
                o = res.outputs[0]
                c = Completion(text=o.text, finish_reason=o.finish_reason or "stop",
                               prompt_tokens=len(res.prompt_token_ids or []), completion_tokens=len(o.token_ids),
                               engine=self.name, model=self.model)
                out.append(c)
                if on_result:
                    on_result(start + offset, c)
        return out
