"""The jobs of `seqgen serve`: what a request asks of the worker, and how the answer goes
back to its route. A text request is one `Request` per output for the running batch, or the
prompts and settings of a beam search; a file request (music) is prepared by the worker
(its prompt parsed within the queue's bound, its settings set by the task) and decoded in the
batch. Each job reports through an asyncio queue, so a waiting client holds no thread.
"""

from __future__ import annotations

import asyncio
import base64
import mimetypes
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seqgen.errors import SeqgenError
from seqgen.generation.batch import Request
from seqgen.generation.text import TextPieces
from seqgen.serve.config import REQUEST_OPTIONS, RequestError, option_field

POLL_SECONDS = 0.25  # how often a waiting route looks for its client having left


class Cancelled(Exception):
    """A job's client left or its time ran out."""


class BusyError(Exception):
    """The queue is full or the server is stopping: answered 503."""


@dataclass
class Done:
    """One output of a job, once it has ended: its text (or the task's output), why it
    ended, and the Request (ids, log-probabilities) it came from."""

    index: int
    output: Any
    finish_reason: str
    request: Request | None = None


class Job:
    """One HTTP request's work: the `Request`s it decodes in the batch (one per sample), the
    prompts and settings of a beam search, or a file output to prepare (`prepare(generator)`
    gives its Request and the function that writes its files). A beam search gives its
    outputs whole, as one Done with a list of texts, one per prompt.
    The worker puts ("text", index, piece), Done, ("error", exception) and ("end", None)
    items on `items`, from its own thread."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        requests: list[Request] = (),
        stop: tuple[str, ...] = (),
        stream: bool = False,
        beams: tuple[list[Any], dict[str, Any]] | None = None,
        prepare: Callable[[Any], tuple[Request, Callable]] | None = None,
    ) -> None:
        self.loop, self.items = loop, asyncio.Queue()
        self.requests, self.stop, self.stream = list(requests), tuple(stop), stream
        self.beams = beams  # (prompts, settings) of a beam search
        self.prepare = prepare  # a file output's: its Request, and what writes its files
        self.finish: Callable[[Request], Any] | None = None
        self.remaining = len(self.requests) or 1
        self.admitted = 0  # requests moved into the batch
        self.pieces: list[TextPieces] = []
        self.arrived = time.monotonic()
        self.first_token_at: float | None = None
        self.cancelled = self.timed_out = self.failed = False

    def put(self, item: Any) -> None:
        self.loop.call_soon_threadsafe(self.items.put_nowait, item)

    def cancel(self) -> None:
        self.cancelled = True
        for request in self.requests:
            request.cancel()

    async def results(self, timeout: float, disconnected: Callable[[], Any] | None = None):
        """The job's items as they come (text pieces and Done), until it has ended. An error
        is raised as it came; the job is cancelled when this ends early (the client left, or
        a stream was closed) and with TimeoutError `timeout` s after its arrival.
        `disconnected`: an async function polled while waiting (a route's
        `request.is_disconnected`)."""
        ended = False
        try:
            while True:
                left = self.arrived + timeout - time.monotonic()
                if left <= 0:
                    self.timed_out = True
                    raise TimeoutError(f"the request took over {timeout:g} s")
                try:
                    item = await asyncio.wait_for(self.items.get(), min(left, POLL_SECONDS))
                except TimeoutError:
                    if disconnected is not None and await disconnected():
                        raise Cancelled() from None
                    continue
                if isinstance(item, tuple) and item[0] == "end":
                    ended = True
                    if item[1] == "cancelled":
                        raise Cancelled()
                    return
                if isinstance(item, tuple) and item[0] == "error":
                    raise item[1]
                yield item
        finally:
            if not ended:
                self.cancel()


def text_job(
    generator,
    loop,
    prompts: list[Any],
    options: dict[str, Any],
    samples: int = 1,
    logprobs: int | None = None,
) -> Job:
    """The job of text prompts, `samples` outputs each (sample i of a prompt is what
    `seqgen generate --num_samples` gives as sample i): with one beam their rows join the
    batch, else a beam search runs on its own. Raises RequestError for what cannot work."""
    settings = {k: v for k, v in options.items() if k not in REQUEST_OPTIONS}
    seed, stop = options["seed"], tuple(options["stop"])
    try:
        if settings["num_beams"] == 1:
            requests = [
                generator.request(
                    prompt, stop=stop, seed=seed, sample=i, logprobs=logprobs, **settings
                )
                for prompt in prompts
                for i in range(samples)
            ]
            return Job(loop, requests=requests, stop=stop, stream=options["stream"])
        generator.request(prompts[0], stop=stop, **{**settings, "num_beams": 1})  # checks
    except (ValueError, SeqgenError) as err:
        raise RequestError(str(err), option_field(str(err), set(settings))) from None
    if samples > 1 or logprobs is not None:
        raise RequestError(
            "beam search gives one output, without logprobs: ask for n 1 or num_beams 1",
            "options.num_beams",
        )
    return Job(loop, beams=(list(prompts), settings), stop=stop)


def file_job(
    loop,
    prompt_bytes: bytes | None,
    options: dict[str, Any],
    extras: dict[str, Any],
    task,
    most: int,
) -> Job:
    """A file task's job (music: a MIDI prompt in, a MIDI continuation out, with its piano
    roll and audio when asked). The worker prepares it (parses the prompt, within the
    queue's bound; the task sets the options), decodes it in the batch like any request,
    and writes its files: they come back base64-encoded."""
    settings = {k: v for k, v in options.items() if k not in ("stop", "stream", "seed")}

    def prepare(generator) -> tuple[Request, Callable[[Request], dict[str, Any]]]:
        with tempfile.TemporaryDirectory(prefix="seqgen-serve-") as tmp:
            ids = _prompt_ids(generator, prompt_bytes, Path(tmp))
            ids, prepared = generator.file_settings(
                ids, settings, _requested_options(task, extras, Path(tmp)), most
            )
        request = generator.request(ids=ids, seed=options["seed"], **prepared)

        def finish(request: Request) -> dict[str, Any]:
            with tempfile.TemporaryDirectory(prefix="seqgen-serve-") as tmp:
                folder = Path(tmp)
                file_options = _requested_options(task, extras, folder)
                out = folder / f"continuation{task.output_suffix}"
                lines = task.write(ids, request.output, generator.tokenizer, file_options, out)
                found = {
                    "output": out,
                    **{
                        name: folder / f"{name}{suffix}"
                        for name, suffix in task.extra_files.items()
                        if extras.get(name)
                    },
                }
                shown = [line.replace(f"{folder}/", "") for line in lines]  # no server paths
                return {
                    "files": {name: _encoded(path) for name, path in found.items()},
                    "lines": shown,
                }

        return request, finish

    return Job(loop, prepare=prepare)


def _requested_options(task, extras: dict[str, Any], folder: Path):
    """A file task's own options from a request's: the extra files it asked for in `folder`."""
    wanted = {
        name: str(folder / f"{name}{suffix}")
        for name, suffix in task.extra_files.items()
        if extras.get(name)
    }
    own = {k: v for k, v in extras.items() if k not in task.extra_files}
    return task.generate_options(**own, **wanted)


def _prompt_ids(generator, prompt_bytes: bytes | None, folder: Path) -> list[int]:
    """The prompt ids of an uploaded file (no file: from nothing)."""
    if prompt_bytes is None:
        return generator.prompt_ids(None)
    path = folder / f"prompt{generator.task.output_suffix}"
    path.write_bytes(prompt_bytes)
    try:
        return generator.prompt_ids(str(path))
    except ValueError as err:  # a file that reads, but asks too much (see the task's prompt)
        raise RequestError(f"the file holds {err}", "file") from None
    except Exception as err:  # a parser's own error type for a corrupt file
        message = str(err).replace(str(path), "the file")  # no server paths
        raise RequestError(
            f"not a readable {generator.task.output_suffix} file: {message}", "file"
        ) from None


# the registered types, whatever this system's mime.types says (e.g. audio/sp-midi)
MEDIA_TYPES = {
    ".mid": "audio/midi",
    ".midi": "audio/midi",
    ".png": "image/png",
    ".wav": "audio/wav",
}


def _encoded(path: Path) -> dict[str, str]:
    media = MEDIA_TYPES.get(path.suffix.lower()) or (
        mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    )
    return {
        "name": path.name,
        "media_type": media,
        "base64": base64.b64encode(path.read_bytes()).decode(),
    }
