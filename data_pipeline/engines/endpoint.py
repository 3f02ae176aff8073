"""Any OpenAI-compatible server as a teacher: vLLM or SGLang (`vllm serve`,
`python -m sglang.launch_server`), `transformers serve`, or a hosted provider.

Options (the distill stage's `runtime`, none of them part of the fingerprint):
  base_url / base_url_env   the server's `/v1` root, or the variable holding it
  api_key_env               the variable holding the API key (never logged or stored)
  concurrency (16)          requests in flight at once
  timeout_s (600)           per attempt, from sending to the last byte
  max_retries (6)           retries after the first attempt, for connection
                            errors, timeouts, 408, 409, 429 and 5xx
  backoff_s (1), backoff_max_s (60)
                            full-jitter exponential backoff; `Retry-After` wins
  use_n (false)             ask for all of a question's samples in one request
                            with `n`; samples the server did not return (it
                            ignores `n`) are then asked one by one
Options that change the answers (hashed): `api` ("chat" or "completions") and
`extra_body` (merged into every request, e.g. `chat_template_kwargs`).

Why not datatrove's InferenceRunner: it is a terminal pipeline step with its
own writer, while distill is an op inside a stage; its request loop treats
HTTP 500 as fatal for the whole task, does not retry 429 and sleeps 5·2^n s
between attempts; and its request cache is keyed by document id and deleted
when the task ends, where ours is keyed by the request's content and kept
across runs and recipes. What it does well (launching and health-checking
vLLM/SGLang servers) a cluster job script does before the run.

The client loop is ours because per-cause accounting is part of the contract:
every failed attempt is counted by cause (`errors/http_429`, `errors/connection`,
...), every request that exhausts its retries is returned as a failed
Completion with its reason (`failed/<cause>`), never dropped; the OpenAI client
retries internally and reports none of that.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from typing import Any

import httpx

from data_pipeline.engines.base import Completion, Engine, GenerationRequest, OnResult, Sampling, register_engine

RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504}
HASHED_OPTIONS = ("api", "extra_body")
RUNTIME_OPTIONS = ("base_url", "base_url_env", "api_key_env", "concurrency", "timeout_s", "max_retries",
                   "backoff_s", "backoff_max_s", "use_n")


class _Retryable(Exception):
    def __init__(self, cause: str, detail: str, retry_after: float | None = None):
        super().__init__(detail)
        self.cause, self.detail, self.retry_after = cause, detail, retry_after


class _Fatal(Exception):
    def __init__(self, cause: str, detail: str):
        super().__init__(detail)
        self.cause, self.detail = cause, detail


def _base_url(options: dict[str, Any]) -> str:
    if options.get("base_url"):
        return str(options["base_url"])
    var = options.get("base_url_env")
    if var and os.environ.get(var):
        return os.environ[var]
    if var:
        raise ValueError(f"endpoint engine: the environment variable {var} (runtime.base_url_env) is not set")
    raise ValueError("endpoint engine: set runtime.base_url (e.g. http://localhost:8000/v1) or runtime.base_url_env")


def _retry_after(headers: httpx.Headers) -> float | None:
    value = headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:  # an HTTP date: rare from inference servers, use our own backoff
        return None


@register_engine("endpoint")
class EndpointEngine(Engine):
    def __init__(self, model: str, revision: str | None = None, **options: Any):
        super().__init__(model, revision=revision, **options)
        self.preflight(options)
        self.base_url = _base_url(options).rstrip("/")
        self.api = options.get("api", "chat")
        if self.api not in ("chat", "completions"):
            raise ValueError(f"endpoint engine: api must be 'chat' or 'completions', not {self.api!r}")
        self.extra_body = dict(options.get("extra_body") or {})
        self.concurrency = int(options.get("concurrency", 16))
        self.timeout_s = float(options.get("timeout_s", 600))
        self.max_retries = int(options.get("max_retries", 6))
        self.backoff_s = float(options.get("backoff_s", 1.0))
        self.backoff_max_s = float(options.get("backoff_max_s", 60.0))
        self.use_n = bool(options.get("use_n", False))
        key_var = options.get("api_key_env")
        self._headers = {"Authorization": f"Bearer {os.environ[key_var]}"} if key_var else {}
        if self.concurrency < 1:
            raise ValueError("endpoint engine: concurrency must be >= 1")

    @classmethod
    def preflight(cls, options: dict[str, Any]) -> None:
        _base_url(options)
        var = options.get("api_key_env")
        if var and not os.environ.get(var):
            raise ValueError(f"endpoint engine: the API key variable {var} (runtime.api_key_env) is not set")

    def identity(self) -> dict[str, Any]:
        # Not the URL: the same model and revision served elsewhere gives the same answers.
        return {**super().identity(), "api": self.api, **({"extra_body": self.extra_body} if self.extra_body else {})}

    # -- payloads ---------------------------------------------------------
    def _payload(self, request: GenerationRequest, sampling: Sampling, n: int = 1) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "temperature": sampling.temperature, "top_p": sampling.top_p,
                                "max_tokens": sampling.max_tokens, "seed": request.seed % 2**31, "stream": False}
        if n > 1:
            body["n"] = n
        if self.api == "chat":
            body["messages"] = request.messages_as_dicts()
        else:
            # The completions API takes text: system prompt and user turn, as written.
            body["prompt"] = "\n\n".join(c for r, c in request.messages if r in ("system", "user"))
        return {**body, **self.extra_body}

    def _parse(self, data: dict[str, Any]) -> list[Completion]:
        usage = data.get("usage") or {}
        if not usage:
            self.counters["usage_missing"] += 1
        choices = sorted(data.get("choices") or [], key=lambda c: c.get("index", 0))
        if not choices:
            raise _Fatal("bad_response", f"no choices in the response: {json.dumps(data)[:200]}")
        out = []
        for i, choice in enumerate(choices):
            if self.api == "chat":
                message = choice.get("message") or {}
                text = message.get("content") or ""
                reasoning = message.get("reasoning_content") or message.get("reasoning") or None
            else:
                text, reasoning = choice.get("text") or "", None
            # usage covers all choices: the prompt once, completions summed.
            out.append(Completion(
                text=text, finish_reason=choice.get("finish_reason") or "stop",
                prompt_tokens=int(usage.get("prompt_tokens") or 0) if i == 0 else 0,
                completion_tokens=int(usage.get("completion_tokens") or 0) if len(choices) == 1 else 0,
                reasoning=reasoning, engine=self.name, model=self.model))
        if len(choices) > 1 and usage.get("completion_tokens"):
            # Split the summed completion tokens over the choices by text length.
            total = int(usage["completion_tokens"])
            lengths = [max(1, len(c.text) + len(c.reasoning or "")) for c in out]
            shares = [total * n // sum(lengths) for n in lengths]
            shares[0] += total - sum(shares)
            for c, k in zip(out, shares):
                c.completion_tokens = k
        return out

    # -- one HTTP attempt and its retries ----------------------------------
    async def _attempt(self, client: httpx.AsyncClient, payload: dict[str, Any]) -> list[Completion]:
        path = "/chat/completions" if self.api == "chat" else "/completions"
        self.counters["attempts"] += 1
        try:
            response = await asyncio.wait_for(client.post(path, json=payload), self.timeout_s)
        except asyncio.TimeoutError as e:
            raise _Retryable("timeout", f"no answer within {self.timeout_s:g}s") from e
        except httpx.TimeoutException as e:
            raise _Retryable("timeout", repr(e)) from e
        except httpx.TransportError as e:  # refused, reset, dropped, protocol errors
            raise _Retryable("connection", f"{type(e).__name__}: {e}") from e
        status = response.status_code
        if status == 200:
            try:
                return self._parse(response.json())
            except (ValueError, KeyError, TypeError) as e:
                raise _Retryable("bad_response", f"unreadable response: {e!r}") from e
        detail = f"HTTP {status}: {response.text[:300]}"
        if status in RETRYABLE_STATUS or status >= 500:
            raise _Retryable(f"http_{status}", detail, _retry_after(response.headers))
        raise _Fatal(f"http_{status}", detail)  # 400, 401, 403, 404, 422: retrying will not help

    async def _request(self, client: httpx.AsyncClient, semaphore: asyncio.Semaphore, payload: dict[str, Any],
                       deliver) -> None:
        attempt = 0
        while True:
            async with semaphore:
                try:
                    completions = await self._attempt(client, payload)
                except _Retryable as e:
                    self.counters[f"errors/{e.cause}"] += 1
                    if attempt >= self.max_retries:
                        self.counters[f"failed/{e.cause}"] += 1
                        deliver(None, f"{e.cause} after {attempt + 1} attempts: {e.detail}")
                        return
                    delay = e.retry_after if e.retry_after is not None else \
                        random.uniform(0, min(self.backoff_max_s, self.backoff_s * 2 ** attempt))
                except _Fatal as e:
                    self.counters[f"errors/{e.cause}"] += 1
                    self.counters[f"failed/{e.cause}"] += 1
                    deliver(None, f"{e.cause}: {e.detail}")
                    return
                else:
                    # Stored (on_result) before the slot is released: with
                    # concurrency 1, nothing is ever answered but unrecorded.
                    deliver(completions, None)
                    return
            attempt += 1
            self.counters["retries"] += 1
            await asyncio.sleep(delay)

    async def _run(self, requests: list[GenerationRequest], sampling: Sampling, on_result: OnResult | None,
                   out: list[Completion | None]) -> None:
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        semaphore = asyncio.Semaphore(self.concurrency)

        def finish(i: int, c: Completion) -> None:
            out[i] = c
            if on_result:
                on_result(i, c)

        def failed(error: str) -> Completion:
            return Completion("", "error", engine=self.name, model=self.model, error=error)

        async with httpx.AsyncClient(base_url=self.base_url, headers=self._headers, limits=limits,
                                     timeout=httpx.Timeout(self.timeout_s)) as client:
            def single(i: int):
                def deliver(completions, error):
                    finish(i, completions[0] if completions else failed(error))
                return self._request(client, semaphore, self._payload(requests[i], sampling), deliver)

            def grouped(idx: list[int]):
                # All samples of one conversation in one request; what the server
                # did not return is asked again one by one.
                async def go() -> None:
                    got: list[Completion] = []

                    def deliver(completions, error):
                        got.extend(completions or [])
                    await self._request(client, semaphore, self._payload(requests[idx[0]], sampling, len(idx)), deliver)
                    for i, c in zip(idx, got):
                        finish(i, c)
                    if len(got) < len(idx):
                        if got:
                            self.counters["n_ignored"] += 1
                        await asyncio.gather(*(single(i) for i in idx[len(got):]))
                return go()

            if self.use_n:
                groups: dict[tuple, list[int]] = {}
                for i, r in enumerate(requests):
                    groups.setdefault(r.messages, []).append(i)
                jobs = [grouped(idx) if len(idx) > 1 else single(idx[0]) for idx in groups.values()]
            else:
                jobs = [single(i) for i in range(len(requests))]
            await asyncio.gather(*jobs)

    def generate(self, requests: list[GenerationRequest], sampling: Sampling,
                 on_result: OnResult | None = None) -> list[Completion]:
        out: list[Completion | None] = [None] * len(requests)
        if requests:
            asyncio.run(self._run(requests, sampling, on_result, out))
        return out  # type: ignore[return-value]
