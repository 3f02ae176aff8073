"""In-process generation with transformers (small models, CPU or one GPU).

Prompts are rendered with the tokenizer's chat template and decoded by a small
KV-cache loop (left padding, attention mask, position ids) instead of
`model.generate`, so that each row samples from its own `torch.Generator` seeded
by its request: a sample depends on its request, not on the batch size or on
which other requests share its batch. Greedy (temperature 0) takes the argmax.

Options: `batch_size` (32), `device` ("cuda" if available, else "cpu"),
`dtype` (float32 on CPU, the checkpoint's own on GPU), `threads` (torch CPU
threads while generating, restored afterwards; default: leave torch's setting).
Tiny models on a busy CPU run far faster with threads=1: OpenMP workers that
spin-wait for a core another process holds make every small matmul slow.

Reasoning: the decoded text is split into `reasoning` and `text` against the
rendered prompt (`base.split_reasoning`), as a server's reasoning parser does
for the endpoint engine: where the template opens the thought (QwQ-32B's
generation prompt ends with `<think>`), the text holds only the closing tag.
`think_tags` (default `("<think>", "</think>")`) names the pair.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

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

logger = logging.getLogger(__name__)


_FULL_HASH_LIMIT = 1 << 30  # bytes per file; bigger files hash their size, head and tail


def folder_fingerprint(folder: Path) -> str:
    """sha256 over the relative path and content of every file in a model folder
    (files over 1 GiB: size plus first and last MiB, to keep loading fast)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        size = path.stat().st_size
        with open(path, "rb") as f:
            if size <= _FULL_HASH_LIMIT:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
            else:
                digest.update(str(size).encode() + f.read(1 << 20))
                f.seek(size - (1 << 20))
                digest.update(f.read())
        digest.update(b"\0")
    return digest.hexdigest()


@register_engine("transformers")
class TransformersEngine(Engine):
    def __init__(self, model: str, revision: str | None = None, **options: Any):
        super().__init__(model, revision=revision, **options)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.batch_size = int(options.get("batch_size", 32))
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.threads = int(options["threads"]) if options.get("threads") else None
        self.think_tags = tuple(options.get("think_tags") or THINK_TAGS)
        self.device = torch.device(options.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = options.get("dtype") or ("float32" if self.device.type == "cpu" else "auto")
        # A Hub id is only loaded from the local cache: engines never download.
        load = {"revision": revision, "local_files_only": True}
        if Path(model).is_dir():
            # keeps a generic tokenizer.json as written (see nano.student.load_tokenizer)
            from data_pipeline.nano.student import load_tokenizer

            self.tokenizer = load_tokenizer(model)
        else:
            self.tokenizer = AutoTokenizer.from_pretrained(model, **load)
        if not self.tokenizer.chat_template:
            raise ValueError(f"{model}: the tokenizer has no chat template")
        self.hf_model = AutoModelForCausalLM.from_pretrained(
            model, dtype=getattr(torch, dtype) if dtype != "auto" else "auto", **load
        ).to(self.device)
        self.hf_model.eval()
        self.eos_ids = self._eos_ids()
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = min(self.eos_ids) if self.eos_ids else 0
        params = inspect.signature(self.hf_model.forward).parameters
        # transformers 5 renamed `past_key_values` to `cache`.
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._fingerprint = folder_fingerprint(Path(model)) if os.path.isdir(model) else None

    def identity(self) -> dict[str, Any]:
        """Adds what changes the samples: the local folder's content (a folder
        retrained in place must not hit the request cache), dtype and device type."""
        ident = super().identity()
        if self._fingerprint:
            ident["model_sha256"] = self._fingerprint
        ident["dtype"] = str(self.hf_model.dtype).removeprefix("torch.")
        ident["device"] = self.device.type
        # The request cache stores completions as the engine hands them over,
        # already split into reasoning and text; it keeps no raw text to split
        # again at read time. Answers cached before the split (the whole thought
        # in `text`) must not be served next to split ones, so the tags are part
        # of the identity: those are asked again once, and a different tag pair
        # never shares an entry.
        ident["think_tags"] = list(self.think_tags)
        return ident

    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        for value in (self.tokenizer.eos_token_id, getattr(self.hf_model.generation_config, "eos_token_id", None)):
            if isinstance(value, int):
                ids.add(value)
            elif value is not None:
                ids.update(int(v) for v in value)
        return ids

    def prompt_text(self, request: GenerationRequest) -> str:
        """The request's conversation rendered with the generation prompt."""
        return self.tokenizer.apply_chat_template(
            request.messages_as_dicts(), add_generation_prompt=True, tokenize=False
        )

    @contextlib.contextmanager
    def _cpu_threads(self) -> Iterator[None]:
        previous = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            torch.set_num_threads(previous)

    def generate(self, requests: list[GenerationRequest], sampling: Sampling,
                 on_result: OnResult | None = None) -> list[Completion]:
        with self._cpu_threads():
            out = self._generate(requests, sampling, on_result)
        self.counters["attempts"] += len(requests)
        for c in out:
            if c.finish_reason == "error":
                self.counters["failed/engine_error"] += 1
        return out

    def _generate(self, requests: list[GenerationRequest], sampling: Sampling,
                  on_result: OnResult | None) -> list[Completion]:
        out: list[Completion | None] = [None] * len(requests)
        texts: dict[int, str] = {}
        prompts: dict[int, list[int]] = {}
        for i, request in enumerate(requests):
            try:
                texts[i] = self.prompt_text(request)
                prompts[i] = self.tokenizer(texts[i], add_special_tokens=False)["input_ids"]
            except Exception as exc:  # noqa: BLE001 - e.g. a template that rejects the roles
                out[i] = self._completion("", "error", 0, 0, error=f"chat template: {exc!r}")
                if on_result:
                    on_result(i, out[i])
        # Similar lengths together: less padding. Results do not depend on grouping.
        order = sorted(prompts, key=lambda i: len(prompts[i]))
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            try:
                batch = self._generate_batch([prompts[i] for i in idx], [requests[i].seed for i in idx], sampling)
            except Exception as exc:  # noqa: BLE001 - engines report, never raise, per request
                logger.exception("transformers engine: batch failed")
                batch = [self._completion("", "error", len(prompts[i]), 0, error=repr(exc)) for i in idx]
            for i, completion in zip(idx, batch):
                out[i] = split_completion(completion, texts[i], self.think_tags)
                if on_result:
                    on_result(i, completion)
        return out  # type: ignore[return-value]

    def _completion(self, text: str, finish: str, n_prompt: int, n_out: int, error: str | None = None) -> Completion:
        return Completion(
            text=text,
            finish_reason=finish,
            prompt_tokens=n_prompt,
            completion_tokens=n_out,
            engine=self.name,
            model=self.model,
            error=error,
        )

    @torch.inference_mode()
    def _generate_batch(self, prompts: list[list[int]], seeds: list[int], sampling: Sampling) -> list[Completion]:
        from transformers import DynamicCache

        n, width = len(prompts), max(len(p) for p in prompts)
        input_ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for row, prompt in enumerate(prompts):  # left padding
            input_ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[row, width - len(prompt) :] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        # One generator per row, on the logits' device: a row's draws depend on its seed only.
        generators = [torch.Generator(device=self.device).manual_seed(int(s) % 2**63) for s in seeds]

        cache = DynamicCache()
        outputs: list[list[int]] = [[] for _ in range(n)]
        finish: list[str | None] = [None] * n
        alive = list(range(n))  # batch row -> request index
        step_ids = input_ids
        for _ in range(sampling.max_tokens):
            logits = self.hf_model(
                input_ids=step_ids,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                logits_to_keep=1,
                **{self._cache_kw: cache},
            ).logits[:, -1, :]
            tokens = self._next_tokens(logits, [generators[i] for i in alive], sampling)
            keep: list[int] = []
            for row, (req, tok) in enumerate(zip(alive, tokens)):
                outputs[req].append(tok)
                if tok in self.eos_ids:
                    finish[req] = "stop"
                else:
                    keep.append(row)
            if not keep:
                break
            if len(keep) < len(alive):  # drop finished rows from the batch and its cache
                sel = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(sel)
                mask, positions = mask[sel], positions[sel]
                alive = [alive[row] for row in keep]
                tokens = [tokens[row] for row in keep]
            step_ids = torch.tensor(tokens, dtype=torch.long, device=self.device)[:, None]
            mask = torch.cat([mask, mask.new_ones((len(alive), 1))], dim=1)
            positions = positions[:, -1:] + 1

        results = []
        for req in range(n):
            ids = outputs[req]
            body = ids[:-1] if finish[req] == "stop" else ids
            text = self.tokenizer.decode(body, skip_special_tokens=True)
            results.append(self._completion(text, finish[req] or "length", len(prompts[req]), len(ids)))
        return results

    @staticmethod
    def _next_tokens(logits: torch.Tensor, generators: list[torch.Generator], sampling: Sampling) -> list[int]:
        """One token per row: argmax when temperature is 0, else a temperature /
        top-p sample drawn with that row's own generator."""
        if sampling.temperature <= 0:
            return logits.argmax(dim=-1).tolist()
        probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
        if sampling.top_p < 1.0:
            sorted_probs, sorted_idx = probs.sort(dim=-1, descending=True)
            # Keep the smallest prefix whose mass reaches top_p (the first token always).
            drop = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= sampling.top_p
            sorted_probs = sorted_probs.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, sorted_idx, sorted_probs)
        return [int(torch.multinomial(p, 1, generator=g)) for p, g in zip(probs, generators)]
