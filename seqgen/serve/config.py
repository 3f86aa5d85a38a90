"""What `seqgen serve` accepts and offers: its options (`ServeConfig`), the checks that bound
every request before it is queued, and what `/info` says. Importable without the serve
extra (`seqgen serve --help`)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from seqgen.devices import DeviceOptions
from seqgen.errors import SeqgenError
from seqgen.generation.decoding import GenerationOptions
from seqgen.tasks import GeneratesFiles

log = logging.getLogger("seqgen")
REQUEST_OPTIONS = ("seed", "stream", "stop")  # besides the GenerationOptions fields


@dataclass(kw_only=True)
class ServeConfig(DeviceOptions):
    """Serve a checkpoint over HTTP: POST /generate and /v1/completions, GET /v1/models,
    /info, /health and /metrics, a page at /."""

    ckpt: str
    """Checkpoint or run directory."""
    host: str = "127.0.0.1"
    """Address to listen on (0.0.0.0 exposes the server to the network: give api_key)."""
    port: int = 8000
    """Port to listen on."""
    api_key: str | None = None
    """Requests must send `Authorization: Bearer KEY` (default: the SEQGEN_API_KEY
    environment variable; none: no key asked). /health and the page stay open (the page
    sends no key: use the API)."""
    max_new_tokens: int = 8192
    """Most tokens one output may take, whatever the request asks (its max_new_tokens, or
    e.g. 30 s of music, which may take up to 200 events per second)."""
    max_prompt_chars: int = 20_000
    """Longest prompt text accepted."""
    max_upload_bytes: int = 2_000_000
    """Largest uploaded file (a MIDI prompt) accepted."""
    max_beams: int = 16
    """Most beams a request may ask for."""
    max_outputs: int = 16
    """Most outputs one request may ask for (prompts times n)."""
    max_stop: int = 8
    """Most stop strings a request may give."""
    max_stop_chars: int = 200
    """Longest stop string accepted."""
    max_queue: int = 32
    """Requests waiting at most; more are answered 503."""
    batch_size: int = 16
    """Most outputs decoded together (1: one at a time)."""
    batching: Literal["continuous", "static"] = "continuous"
    """continuous: a request joins the running batch at its next step and leaves it when it
    ends. static: the batch takes no request until all of it has ended (for comparison)."""
    request_timeout: float = 600.0
    """Seconds a request may take from its arrival; past them it is cancelled (504)."""
    max_connections: int = 256
    """Open connections at most; more are answered 503 by uvicorn."""
    shutdown_seconds: float = 30.0
    """On SIGTERM or Ctrl-C: stop taking requests, let the running ones finish for this long,
    then cancel the rest and exit."""

    def __post_init__(self) -> None:
        DeviceOptions.__post_init__(self)
        if self.api_key is None:
            self.api_key = os.environ.get("SEQGEN_API_KEY") or None
        for name in (
            "port",
            "max_new_tokens",
            "max_prompt_chars",
            "max_upload_bytes",
            "max_beams",
            "max_outputs",
            "max_stop",
            "max_stop_chars",
            "max_queue",
            "batch_size",
            "max_connections",
        ):
            if getattr(self, name) < (0 if name == "port" else 1):
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.request_timeout > 0 or self.shutdown_seconds < 0:
            raise ValueError("request_timeout must be > 0 and shutdown_seconds >= 0")


class RequestError(Exception):
    """A request the client must change: answered with `status` and the field at fault."""

    def __init__(self, message: str, field: str | None = None, status: int = 422) -> None:
        super().__init__(message)
        self.field, self.status = field, status


def check_options(raw: Any, config: ServeConfig, task) -> dict[str, Any]:
    """The generation options of a request, validated as the CLI validates them, within the
    server's bounds; the task's defaults fill what is not given."""
    if not isinstance(raw, dict):
        raise RequestError("options must be a JSON object", "options")
    known = {f.name for f in dataclasses.fields(GenerationOptions)} | set(REQUEST_OPTIONS)
    for key in raw:
        if key not in known:
            raise RequestError(
                f"unknown option {key!r}; options: {', '.join(sorted(known))}", f"options.{key}"
            )
    given = {k: v for k, v in raw.items() if k not in REQUEST_OPTIONS}
    defaults = {k: v for k, v in task.decoding_defaults().items() if k in known}
    try:
        options = GenerationOptions(**{**defaults, **given}).generation_options()
    except (ValueError, SeqgenError) as err:
        raise RequestError(str(err), option_field(str(err), known)) from None
    for name, most in (("max_new_tokens", config.max_new_tokens), ("num_beams", config.max_beams)):
        if options[name] > most:
            raise RequestError(f"{name} must be <= {most} on this server", f"options.{name}")
    seed, stop = raw.get("seed"), raw.get("stop", [])
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise RequestError(f"seed must be an integer, got {seed!r}", "options.seed")
    check_stop(stop, config, "options.stop")
    if not isinstance(raw.get("stream", False), bool):
        raise RequestError("stream must be true or false", "options.stream")
    return {**options, "seed": seed, "stop": stop, "stream": raw.get("stream", False)}


def check_stop(stop: Any, config: ServeConfig, field: str) -> None:
    """Stop strings: a list of at most `max_stop` non-empty strings of `max_stop_chars`."""
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise RequestError("stop must be a list of non-empty strings", field)
    if len(stop) > config.max_stop:
        raise RequestError(f"at most {config.max_stop} stop strings on this server", field)
    if any(len(s) > config.max_stop_chars for s in stop):
        raise RequestError(
            f"a stop string may have at most {config.max_stop_chars} characters on this server",
            field,
        )


def json_body(body: bytes, field: str = "body") -> Any:
    """A request body (or a form's `field`) parsed as JSON, where NaN and Infinity are not
    numbers."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not a JSON number")

    try:
        return json.loads(body or b"{}", parse_constant=refuse)
    except (UnicodeDecodeError, ValueError) as err:
        raise RequestError(f"{field} is not JSON ({err})", field, 400) from None


def check_prompt(prompt: Any, config: ServeConfig, field: str) -> None:
    if not isinstance(prompt, str):
        raise RequestError("prompt must be a string", field)
    if len(prompt) > config.max_prompt_chars:
        raise RequestError(
            f"prompt of {len(prompt):,} characters; this server accepts "
            f"{config.max_prompt_chars:,}",
            field,
            413,
        )


async def read_body(request, limit: int, field: str = "body") -> bytes:
    """The request body, counted as it arrives and refused past `limit` bytes (with or
    without a Content-Length); kept on the request for its form parser."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(
            f"request body of {int(declared):,} bytes; this server accepts {limit:,}", field, 413
        )
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestError(f"request body over {limit:,} bytes", field, 413)
    request._body = bytes(body)  # Starlette's form() reads a body already read from here
    return request._body


def option_field(message: str, known: set[str]) -> str:
    """The field a validation message is about: `options.NAME` for the first word of it that
    names an option in `known`, else `options`."""
    for word in message.replace(".", " ").replace("(", " ").split():
        if word in known:
            return f"options.{word}"
    return "options"


def info(generator, config: ServeConfig, extras: list[str]) -> dict[str, Any]:
    meta, task = generator.meta, generator.task
    return {
        "task": task.name,
        "checkpoint": Path(generator.path).name,  # not the server's paths
        "step": meta.get("step"),
        "tokens_trained": meta.get("train_tokens"),
        "model": meta["model"],
        "vocab_size": generator.tokenizer.vocab_size,
        "tokenizer": generator.tokenizer.kind,
        "generation_defaults": task.decoding_defaults(),
        "prompt": "file" if isinstance(task, GeneratesFiles) else "text",
        "continues_prompt": task.continues_prompt,
        "file_options": _file_option_defaults(task),
        "extra_files": extras,
        "limits": {
            k: getattr(config, k)
            for k in (
                "max_new_tokens",
                "max_prompt_chars",
                "max_upload_bytes",
                "max_queue",
                "max_beams",
                "max_outputs",
                "max_stop",
                "max_stop_chars",
                "request_timeout",
            )
        },
    }


def _file_option_defaults(task) -> dict[str, Any]:
    """A file task's own options and their defaults (extra files as true/false)."""
    if not isinstance(task, GeneratesFiles):
        return {}
    return {
        f.name: (False if f.name in task.extra_files else f.default)
        for f in dataclasses.fields(task.generate_options)
    }


def available_extras(generator) -> list[str]:
    """The extra files a file task can write here (music: audio only with FluidSynth)."""
    task = generator.task
    if not isinstance(task, GeneratesFiles):
        return []
    found = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, suffix in task.extra_files.items():
            options = task.generate_options(**{name: str(Path(tmp) / f"{name}{suffix}")})
            try:
                task.prepare(generator.prompt_ids(None), options, {"max_new_tokens": 1})
            except ValueError as err:
                log.info("seqgen serve: no %s here (%s)", name, err)
                continue
            found.append(name)
    return found
