"""`seqgen serve`: one checkpoint behind an HTTP API and a small web page.

FastAPI + uvicorn: a well-kept, small stack whose request parsing, multipart uploads and
streaming responses are standard, and that runs offline with no build step (LitServe, as
litgpt uses, adds a process-per-worker layer that a CPU-bound single model does not need).

One worker thread owns the model and runs requests in arrival order from a bounded queue (a
full queue answers 503). Requests whose output does not depend on how they are grouped
(greedy, or sampled without a seed; one beam, no stop strings) and that share their options
are decoded together as one batch, as `Generator.generate_many` decodes a file: batches give
the same outputs as separate calls. A request with a seed runs alone, so it gets exactly what
`seqgen generate --seed` gives.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import mimetypes
import tempfile
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from seqgen.decoding import GenerationOptions
from seqgen.devices import DeviceOptions
from seqgen.errors import SeqgenError

log = logging.getLogger("seqgen")
REQUEST_OPTIONS = ("seed", "stream", "stop")  # besides the GenerationOptions fields


@dataclass(kw_only=True)
class ServeConfig(DeviceOptions):
    """Serve a checkpoint over HTTP: POST /generate, GET /info and /health, a page at /."""

    ckpt: str
    """Checkpoint or run directory."""
    host: str = "127.0.0.1"
    """Address to listen on (0.0.0.0 exposes the server to the network)."""
    port: int = 8000
    """Port to listen on."""
    max_new_tokens: int = 8192
    """Most tokens one output may take, whatever the request asks (its max_new_tokens, or
    e.g. 30 s of music, which may take up to 200 events per second)."""
    max_prompt_chars: int = 20_000
    """Longest prompt text accepted."""
    max_upload_bytes: int = 2_000_000
    """Largest uploaded file (a MIDI prompt) accepted."""
    max_queue: int = 32
    """Requests waiting at most; more are answered 503."""
    batch_size: int = 16
    """Most requests decoded together (1: one at a time)."""

    def __post_init__(self) -> None:
        DeviceOptions.__post_init__(self)
        for name in ("port", "max_new_tokens", "max_prompt_chars", "max_upload_bytes",
                     "max_queue", "batch_size"):  # fmt: skip
            if getattr(self, name) < (0 if name == "port" else 1):
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


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
            raise RequestError(f"unknown option {key!r}; options: {', '.join(sorted(known))}",
                               f"options.{key}")  # fmt: skip
    given = {k: v for k, v in raw.items() if k not in REQUEST_OPTIONS}
    defaults = {k: v for k, v in task.generation_defaults().items() if k in known}
    try:
        options = GenerationOptions(**{**defaults, **given}).generation_options()
    except (ValueError, SeqgenError) as err:
        raise RequestError(str(err), f"options.{field_named(str(err), known)}") from None
    if options["max_new_tokens"] > config.max_new_tokens:
        raise RequestError(f"max_new_tokens must be <= {config.max_new_tokens} on this server",
                           "options.max_new_tokens")  # fmt: skip
    seed, stop = raw.get("seed"), raw.get("stop", [])
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise RequestError(f"seed must be an integer, got {seed!r}", "options.seed")
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise RequestError("stop must be a list of non-empty strings", "options.stop")
    if not isinstance(raw.get("stream", False), bool):
        raise RequestError("stream must be true or false", "options.stream")
    return {**options, "seed": seed, "stop": stop, "stream": raw.get("stream", False)}


def field_named(message: str, known: set[str]) -> str:
    """The option a validation message is about (its first word that names one)."""
    for word in message.replace(".", " ").replace("(", " ").split():
        if word in known:
            return word
    return "options"


@dataclass
class Job:
    """One request for the worker: `run(generator)` gives its result, set on `future`."""

    run: Callable[[Any], Any]
    batch_key: tuple | None = None  # requests with equal keys may be decoded together
    prompt: Any = None
    future: Future = dataclasses.field(default_factory=Future)


class Worker:
    """The thread that owns the model: jobs in arrival order, compatible ones in batches."""

    def __init__(self, generator, config: ServeConfig) -> None:
        self.generator, self.config = generator, config
        self.pending: deque[Job] = deque()
        self.ready = threading.Condition()
        self.stopped = False
        self.batches: list[int] = []  # sizes decoded, for the load benchmark
        self.thread = threading.Thread(target=self._loop, name="seqgen-worker", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> Future:
        with self.ready:
            if len(self.pending) >= self.config.max_queue:
                raise RequestError(f"busy: {len(self.pending)} requests are waiting; retry "
                                   "later", None, status=503)  # fmt: skip
            self.pending.append(job)
            self.ready.notify()
        return job.future

    def stop(self) -> None:
        with self.ready:
            self.stopped = True
            self.ready.notify()

    def _take(self) -> list[Job] | None:
        with self.ready:
            while not self.pending and not self.stopped:
                self.ready.wait()
            if self.stopped:
                return None
            first = self.pending.popleft()
            batch = [first]
            if first.batch_key is not None:
                for job in list(self.pending):
                    if len(batch) >= self.config.batch_size:
                        break
                    if job.batch_key == first.batch_key:
                        self.pending.remove(job)
                        batch.append(job)
            return batch

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            self.batches.append(len(batch))
            try:
                if len(batch) == 1:
                    results = [batch[0].run(self.generator)]
                else:  # same options: one generate_many over the prompts
                    prompts = [job.prompt for job in batch]
                    results = self.generator.generate_many(prompts, batch_size=len(batch),
                                                           **dict(batch[0].batch_key))  # fmt: skip
            except Exception as err:  # delivered to the requests, which answer for it
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(err)
                continue
            for job, result in zip(batch, results, strict=True):
                if not job.future.done():
                    job.future.set_result(result)


def text_job(prompt: str, options: dict[str, Any]) -> Job:
    """A text request's job; batchable when its output does not depend on its batch."""
    settings = {k: v for k, v in options.items() if k not in REQUEST_OPTIONS}
    seed, stop = options["seed"], options["stop"]
    key = None
    if settings["num_beams"] == 1 and not stop and (settings["temperature"] == 0 or seed is None):
        key = tuple(sorted(settings.items()))
    return Job(lambda generator: generator.generate(prompt, stop=stop, seed=seed, **settings),
               key, prompt)  # fmt: skip


def stream_job(prompt: str, options: dict[str, Any], pieces: Any) -> Job:
    """A streamed request's job: each text piece goes to `pieces` (a queue) as it is made,
    then None."""
    settings = {k: v for k, v in options.items() if k not in REQUEST_OPTIONS}

    def run(generator) -> None:
        try:
            for piece in generator.stream(prompt, stop=options["stop"], seed=options["seed"],
                                          **settings):  # fmt: skip
                pieces.put(piece)
        finally:
            pieces.put(None)

    return Job(run)


def file_job(ids: list[int], options: dict[str, Any], extras: dict[str, Any], task,
             most: int) -> Job:  # fmt: skip
    """A file task's job (music: the ids of a MIDI prompt in, a MIDI continuation out, with
    its piano roll and audio when asked): the files come back base64-encoded."""
    from seqgen.sample import generate_file

    settings = {k: v for k, v in options.items() if k not in ("stop", "stream")}

    def run(generator) -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="seqgen-serve-") as tmp:
            folder = Path(tmp)
            wanted = {name: str(folder / f"{name}{suffix}")
                      for name, suffix in task.extra_files.items() if extras.get(name)}  # fmt: skip
            own = {k: v for k, v in extras.items() if k not in task.extra_files}
            file_options = task.generate_options(**own, **wanted)
            out = folder / f"continuation{task.output_suffix}"
            lines = generate_file(generator, ids, settings, file_options, out, most=most)
            found = {"output": out, **{name: Path(path) for name, path in wanted.items()}}
            shown = [line.replace(f"{folder}/", "") for line in lines]  # no server paths
            return {"files": {name: _encoded(path) for name, path in found.items()},
                    "lines": shown}  # fmt: skip

    return Job(run)


# the registered types, whatever this system's mime.types says (e.g. audio/sp-midi)
MEDIA_TYPES = {".mid": "audio/midi", ".midi": "audio/midi", ".png": "image/png",
               ".wav": "audio/wav"}  # fmt: skip


def _encoded(path: Path) -> dict[str, str]:
    media = MEDIA_TYPES.get(path.suffix.lower()) or (
        mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    )
    return {"name": path.name, "media_type": media,
            "base64": base64.b64encode(path.read_bytes()).decode()}  # fmt: skip


def page() -> str:
    """The page at `/`, shipped with the package (no external scripts or fonts)."""
    return files("seqgen").joinpath("assets/serve.html").read_text()


def sse(payload: dict[str, Any], event: str | None = None) -> str:
    """One server-sent event: `data: {"text": ...}` for a piece of text, named events
    (`done`, `error`) around it."""
    return (f"event: {event}\n" if event else "") + f"data: {json.dumps(payload)}\n\n"
