"""Offline batched generation with vLLM on GPUs (the `gpu` extra).

vLLM's `LLM.chat` renders each conversation with the model's chat template and
schedules the whole batch itself (continuous batching, prefix caching); each
request carries its own `seed`, so a sample depends on its request only.

Options (distill `runtime`, not hashed): `tensor_parallel_size` (1),
`data_parallel_size` (1), `gpu_memory_utilization` (0.9), `enforce_eager`,
`batch_size` (requests per `LLM.chat` call; results are stored after each, 512).
Options that change the answers (hashed, `engine_options`): `dtype` ("auto"),
`max_model_len`, `chat_template_kwargs`.

Data parallelism (`data_parallel_size` > 1): `get_engine` starts that many
replicas of this engine, each in its own process on its own group of
`tensor_parallel_size` GPUs (replicas.py).

Reasoning: each output is split into `reasoning` and `text` against its
rendered prompt (`base.split_reasoning`), what `vllm serve --reasoning-parser
deepseek_r1` does for the endpoint engine: QwQ-32B's template ends the prompt
with `<think>`, so its text holds only the closing tag. The same calls as the
transformers engine (render with the tokenizer's chat template, then
`split_completion`), which is what the tests exercise: vllm is not installed
on CPU machines.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from data_pipeline.engines.base import (
    THINK_TAGS,
    Completion,
    Engine,
    GenerationRequest,
    OnResult,
    Sampling,
    register_engine,
    split_completion,
)

GPU_EXTRA_HINT = "install the GPU extra on a CUDA machine: pip install 'commonthoughts[gpu]'"


def gpu_group(slot: int, tensor_parallel: int, data_parallel: int, visible: list[str]) -> list[str]:
    """The GPUs of data-parallel replica `slot % data_parallel`: a contiguous
    group of `tensor_parallel` devices out of `visible`."""
    need = tensor_parallel * data_parallel
    if len(visible) < need:
        raise ValueError(f"tensor_parallel_size={tensor_parallel} x data_parallel_size={data_parallel} "
                         f"needs {need} GPUs, {len(visible)} visible")
    replica = slot % data_parallel
    return visible[replica * tensor_parallel: (replica + 1) * tensor_parallel]


@register_engine("vllm")
class VLLMEngine(Engine):
    def __init__(self, model: str, revision: str | None = None, **options: Any):
        super().__init__(model, revision=revision, **options)
        self.preflight(options)
        tp = int(options.get("tensor_parallel_size", 1))
        self.batch_size = int(options.get("batch_size", 512))
        self.chat_template_kwargs = options.get("chat_template_kwargs") or {}
        self.think_tags = tuple(options.get("think_tags") or THINK_TAGS)
        import vllm

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
        self.tokenizer = self.llm.get_tokenizer()

    @classmethod
    def preflight(cls, options: dict[str, Any]) -> None:
        if importlib.util.find_spec("vllm") is None:
            raise ValueError(f"the vllm engine needs vllm, which is not installed here: {GPU_EXTRA_HINT}")

    def identity(self) -> dict[str, Any]:
        ident = {**super().identity(), "dtype": self._dtype, "max_model_len": self.options.get("max_model_len")}
        if self.chat_template_kwargs:
            ident["chat_template_kwargs"] = self.chat_template_kwargs
        # The request cache stores completions already split into reasoning and
        # text (no raw text to split again at read time): the tags in the
        # identity keep answers cached before the split from being served next
        # to split ones (asked again once), as in the transformers engine.
        ident["think_tags"] = list(self.think_tags)
        return ident

    def prompt_text(self, request: GenerationRequest) -> str:
        """The request rendered as `LLM.chat` renders it: the tokenizer's chat
        template with the generation prompt and `chat_template_kwargs`."""
        return self.tokenizer.apply_chat_template(request.messages_as_dicts(), tokenize=False,
                                                  add_generation_prompt=True, **self.chat_template_kwargs)

    def generate(self, requests: list[GenerationRequest], sampling: Sampling,
                 on_result: OnResult | None = None) -> list[Completion]:
        out: list[Completion] = []
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start: start + self.batch_size]
            params = [self._vllm.SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p,
                                                max_tokens=sampling.max_tokens, seed=r.seed % 2**63, n=1)
                      for r in chunk]
            texts = [self.prompt_text(r) for r in chunk]
            results = self.llm.chat([r.messages_as_dicts() for r in chunk], sampling_params=params, use_tqdm=False,
                                    chat_template_kwargs=self.chat_template_kwargs or None)
            self.counters["attempts"] += len(chunk)
            for offset, res in enumerate(results):
                o = res.outputs[0]
                c = Completion(text=o.text, finish_reason=o.finish_reason or "stop",
                               prompt_tokens=len(res.prompt_token_ids or []), completion_tokens=len(o.token_ids),
                               engine=self.name, model=self.model)
                c = split_completion(c, texts[offset], self.think_tags)
                out.append(c)
                if on_result:
                    on_result(start + offset, c)
        return out
