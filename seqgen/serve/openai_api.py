"""OpenAI's completions API on `seqgen serve`: `POST /v1/completions` (streamed as server-sent
events ending in `data: [DONE]`) and `GET /v1/models`, so that the `openai` client and tools
made for vLLM or TGI work unchanged.

The prompt is what `seqgen generate --prompt` takes: text to continue, or the source text of
a translation or summarization checkpoint, which its task shapes. Options the request does
not give are the task's defaults (as for `seqgen generate`; max_tokens too). seqgen's own
options (top_k, num_beams, repetition_penalty, min_tokens, ...) go beside OpenAI's, as
vLLM's do (the client's `extra_body`).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from seqgen.serve.config import (
    RequestError,
    ServeConfig,
    check_options,
    check_prompt,
    check_stop,
    json_body,
    read_body,
)
from seqgen.serve.jobs import Done, text_job
from seqgen.tasks import GeneratesFiles

# OpenAI's name -> seqgen's option
RENAMED = {"max_tokens": "max_new_tokens", "min_tokens": "min_new_tokens"}
OWN = {
    "top_k",
    "repetition_penalty",
    "no_repeat_ngram_size",
    "num_beams",
    "length_penalty",
    "early_stopping",
}
# accepted at the values that change nothing
INERT = {
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "best_of": 1,
    "echo": False,
    "suffix": None,
    "logit_bias": None,
    "user": None,
    "stream_options": None,
}
KEYS = {
    "model",
    "prompt",
    "n",
    "stop",
    "seed",
    "stream",
    "logprobs",
    "temperature",
    "top_p",
    *RENAMED,
    *OWN,
    *INERT,
}
MOST_LOGPROBS = 5  # as OpenAI's


def add_routes(app: FastAPI, config: ServeConfig, ready, submit, results) -> None:
    """Add the /v1 routes; `ready()` gives the generator, `submit(job)` queues a job and
    `results(job, request, names)` yields its items (as the app's own routes use them)."""

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        generator = ready()
        return {"object": "list", "data": [_model_card(generator)]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        generator = ready()
        if isinstance(generator.task, GeneratesFiles):
            raise RequestError(
                f"the {generator.task.name} task takes a file: use POST /generate", "prompt", 415
            )
        data = json_body(await _read(request, config))
        model = data.get("model", _model_id(generator)) if isinstance(data, dict) else None
        if model != _model_id(generator):
            raise RequestError(
                f"the model {model!r} is not served here; GET /v1/models lists the one that is",
                "model",
                404,
            )
        prompts, samples, options, logprobs, usage = _parsed(data, config, generator)
        job = text_job(generator, asyncio.get_running_loop(), prompts, options, samples, logprobs)
        submit(job)
        names = {*RENAMED.values(), *OWN, "temperature", "top_p", "stop", "seed"}
        reply = _Reply(generator, prompts, samples, job)
        if options["stream"]:
            return StreamingResponse(
                reply.chunks(results(job, request, names), usage), media_type="text/event-stream"
            )
        done = [item async for item in results(job, request, names) if isinstance(item, Done)]
        return reply.whole(done)


async def _read(request: Request, config: ServeConfig) -> bytes:
    limit = (config.max_prompt_chars + 4096) * config.max_outputs * 4
    return await read_body(request, limit)


def _parsed(data: Any, config: ServeConfig, generator):
    """(prompts, samples per prompt, options for `text_job`, logprobs, whether to send
    usage in a stream) of a completions request."""
    if not isinstance(data, dict):
        raise RequestError("the body must be a JSON object", "body")
    unknown = sorted(set(data) - KEYS)
    if unknown:
        raise RequestError(f"unknown field {unknown[0]!r}", unknown[0])
    for key, inert in INERT.items():
        if key in data and data[key] != inert and key not in ("user", "stream_options"):
            raise RequestError(f"{key} is not supported here (only {json.dumps(inert)})", key)
    prompt = data.get("prompt", "")
    prompts = prompt if isinstance(prompt, list) else [prompt]
    if not prompts:
        raise RequestError("prompt must be a string or a non-empty list of strings", "prompt")
    for text in prompts:
        check_prompt(text, config, "prompt")
    samples = data.get("n", 1)
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise RequestError(f"n must be an integer >= 1, got {samples!r}", "n")
    if len(prompts) * samples > config.max_outputs:
        raise RequestError(
            f"at most {config.max_outputs} outputs (prompts times n) per request on this server",
            "n",
        )
    logprobs = data.get("logprobs")
    if logprobs is not None and (
        not isinstance(logprobs, int)
        or isinstance(logprobs, bool)
        or not 0 <= logprobs <= MOST_LOGPROBS
    ):
        raise RequestError(f"logprobs must be an integer from 0 to {MOST_LOGPROBS}", "logprobs")
    stop = data.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    check_stop(stop, config, "stop")
    passed = {*RENAMED, *OWN, "temperature", "top_p", "seed", "stream"}
    raw = {RENAMED.get(k, k): v for k, v in data.items() if k in passed}
    raw["stop"] = stop
    try:
        options = check_options(raw, config, generator.task)
    except RequestError as err:  # name the field as the request did
        field = (err.field or "").removeprefix("options.")
        field = {v: k for k, v in RENAMED.items()}.get(field, field)
        raise RequestError(
            str(err).replace("max_new_tokens", "max_tokens"), field, err.status
        ) from None
    if options["stream"] and options["num_beams"] > 1 and len(prompts) * samples > 1:
        raise RequestError("a streamed beam search gives one output", "num_beams")
    stream_options = data.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise RequestError("stream_options must be an object", "stream_options")
    return prompts, samples, options, logprobs, bool(stream_options.get("include_usage"))


def _model_card(generator) -> dict[str, Any]:
    return {
        "id": _model_id(generator),
        "object": "model",
        "owned_by": "seqgen",
        "created": int(generator.meta.get("created", 0) or 0),
    }


def _model_id(generator) -> str:
    from pathlib import Path

    path = Path(generator.path)
    return path.parent.name if path.name == "final" else path.name


class _Reply:
    """A completions answer: whole, or as chunks while the outputs are made."""

    def __init__(self, generator, prompts: list[str], samples: int, job) -> None:
        self.generator, self.prompts, self.samples, self.job = generator, prompts, samples, job
        self.id = f"cmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = _model_id(generator)

    def whole(self, done: list[Done]) -> dict[str, Any]:
        if not self.job.requests:  # a beam search: one output per prompt
            return self._body([Done(i, text, "stop") for i, text in enumerate(done[0].output)])
        return self._body(sorted(done, key=lambda d: d.index))

    def _body(self, done: list[Done]) -> dict[str, Any]:
        choices = [
            {
                "index": d.index,
                "text": d.output,
                "finish_reason": _reason(d),
                "logprobs": self._logprobs(d),
            }
            for d in done
        ]
        return {
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": self._usage(done),
        }

    async def chunks(self, items, usage: bool):
        """`data: {chunk}` per text piece, a last chunk per choice with its finish_reason,
        then the usage (if asked) and `data: [DONE]`; an error ends it as OpenAI's do."""
        done: list[Done] = []
        try:
            async for item in items:
                if isinstance(item, Done):
                    if not self.job.requests:  # a beam search's output comes whole
                        yield self._chunk(0, item.output[0], None)
                        item = Done(0, item.output[0], "stop")
                    done.append(item)
                    yield self._chunk(item.index, "", _reason(item), self._logprobs(item))
                elif item[0] == "text":
                    yield self._chunk(item[1], item[2], None)
        except RequestError as err:
            body = {"error": {"message": str(err), "type": "server_error", "code": err.status}}
            yield f"data: {json.dumps(body)}\n\n"
        else:
            if usage:
                yield _data(
                    {
                        "id": self.id,
                        "object": "text_completion",
                        "created": self.created,
                        "model": self.model,
                        "choices": [],
                        "usage": self._usage(done),
                    }
                )
        yield "data: [DONE]\n\n"

    def _chunk(
        self, index: int, text: str, reason: str | None, logprobs: dict[str, Any] | None = None
    ) -> str:
        """One chunk of choice `index`; a choice's last (with its finish_reason) carries the
        log-probabilities of all its tokens, when asked for."""
        return _data(
            {
                "id": self.id,
                "object": "text_completion",
                "created": self.created,
                "model": self.model,
                "choices": [
                    {"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason}
                ],
            }
        )

    def _usage(self, done: list[Done]) -> dict[str, int]:
        if self.job.requests:  # each prompt's ids, from its first sample's request
            prompt = sum(len(r.prompt) for r in self.job.requests[:: self.samples])
        else:
            prompt = sum(len(self.generator.prompt_ids(p)) for p in self.prompts)
        if not self.job.requests:
            completion = sum(len(self.generator.tokenizer.encode(d.output)) for d in done)
        else:
            completion = sum(len(d.request.output) for d in done)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def _logprobs(self, done: Done) -> dict[str, Any] | None:
        """OpenAI's legacy logprobs: each new token's text, its log-probability, the most
        likely tokens' at its step, and where its text starts."""
        request = done.request
        if request is None or request.logprobs is None:
            return None
        texts = _token_texts(self.generator, request.output)
        offsets, at = [], 0
        for text in texts:
            offsets.append(at)
            at += len(text)
        label = lambda token: self.generator.tokenizer.decode([token])  # noqa: E731
        return {
            "tokens": texts,
            "token_logprobs": [lp for lp, _ in request.token_logprobs],
            "top_logprobs": [
                {label(t): v for t, v in top.items()} for _, top in request.token_logprobs
            ],
            "text_offset": offsets,
        }


def _token_texts(generator, ids: list[int]) -> list[str]:
    """The text each id adds to the output (decoded with a few ids before it, so that a
    word's leading space stays with it)."""
    texts = []
    for i in range(len(ids)):
        before = generator.text(ids[max(0, i - 8) : i])
        texts.append(generator.text(ids[max(0, i - 8) : i + 1])[len(before) :])
    return texts


def _reason(done: Done) -> str:
    return "length" if done.finish_reason == "length" else "stop"


def _data(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"
