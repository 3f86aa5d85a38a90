"""The thread of `seqgen serve` that owns the model, and the jobs it runs.

Continuous batching: one `Batch` stays open, and every request decoded with one beam joins
it at the next step and leaves when it ends, streamed or not, seeded or not, with its own
options and stop strings; a finished row's place goes to the next request at once. A seeded
request draws from its own stream, so it gets what `seqgen generate --seed` gives whatever
shares its batch. A file output (music) is prepared by the worker (its prompt parsed, its
settings and rules set by the task), decoded in the batch, and written between two steps.
Beam searches run between two steps: a search reorders its rows every step, so those waiting
with the same settings run as one batched search instead.

Each job reports back to its route through an asyncio queue, so a waiting client holds no
thread. A cancelled job (the client left, or its time ran out) leaves the batch at the next
step; one running on its own stops at its next id.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import mimetypes
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from seqgen.batch import Request
from seqgen.errors import SeqgenError
from seqgen.inference import TextPieces
from seqgen.serve import REQUEST_OPTIONS, RequestError, field_named

log = logging.getLogger("seqgen")
POLL_SECONDS = 0.25  # how often a waiting route looks for its client having left
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class Cancelled(Exception):
    """A job's client left or its time ran out."""


class Metrics:
    """What `GET /metrics` shows, in a registry of this server's own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "seqgen_requests", "Requests answered, by outcome.", ["outcome"], registry=registry
        )
        self.tokens = Counter("seqgen_generated_tokens", "Tokens generated.", registry=registry)
        self.queue = Gauge(
            "seqgen_queue_depth", "Requests waiting for the model.", registry=registry
        )
        self.running = Gauge("seqgen_running_rows", "Rows being decoded now.", registry=registry)
        self.first_token = Histogram(
            "seqgen_time_to_first_token_seconds",
            "From a request's arrival to its first token.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.latency = Histogram(
            "seqgen_request_latency_seconds",
            "From a request's arrival to its last token.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )


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
        self.cancelled = self.timed_out = False

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


class Worker:
    """The thread that owns the model: batched jobs join the open batch, the others run on
    their own, in arrival order. `batching` "static" admits nothing while the batch runs
    (the baseline of the load benchmark)."""

    def __init__(
        self,
        generator,
        batch_size: int,
        max_queue: int,
        metrics: Metrics,
        batching: Literal["continuous", "static"] = "continuous",
    ) -> None:
        self.generator, self.metrics = generator, metrics
        self.batch_size, self.max_queue, self.batching = batch_size, max_queue, batching
        self.batch = generator.batch(batch_size)
        self.pending: deque[Job] = deque()
        self.owners: dict[Request, tuple[Job, int]] = {}
        self.ready = threading.Condition()
        self.stopping = False
        self.loaded = threading.Event()
        metrics.queue.set_function(lambda: len(self.pending) + len(self.batch.waiting))
        metrics.running.set_function(lambda: len(self.batch))
        self.thread = threading.Thread(target=self._loop, name="seqgen-worker", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> None:
        """Queue `job`; a full queue raises BusyError."""
        with self.ready:
            if self.stopping:
                raise BusyError("the server is shutting down")
            if len(self.pending) >= self.max_queue:
                raise BusyError(f"busy: {len(self.pending)} requests are waiting; retry later")
            self.pending.append(job)
            self.ready.notify()

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel what is waiting or running, and end the thread."""
        with self.ready:
            self.stopping = True
            for job in self.pending:
                job.cancel()
            for job, _ in self.owners.values():
                job.cancel()
            self.ready.notify()
        self.thread.join(timeout)

    def _loop(self) -> None:
        self.loaded.set()
        while True:
            with self.ready:
                while not self.pending and not self.batch and not self.stopping:
                    self.ready.wait()
                alone = self._admit()  # (drops the cancelled)
                if self.stopping and not self.batch and not alone:
                    return
            if alone and alone[0].prepare is not None:
                self._prepare(alone[0])
            elif alone:
                self._beam_search(alone)
            elif self.batch:
                self._step()

    def _admit(self) -> list[Job]:
        """Move the outputs of waiting jobs into the batch while it has room (a job with
        more than it has stays first in line, part admitted). Returns, taken out of the
        queue, a file job at its head to prepare, or the beam search at its head with those
        waiting that can join it (same settings: one batched beam search)."""
        empty = not self.batch
        while self.pending:
            job = self.pending[0]
            if job.cancelled:
                self.pending.popleft()
                job.remaining -= (len(job.requests) or 1) - job.admitted  # never to finish
                if job.remaining == 0:
                    _end(job, self.metrics, "cancelled")
                continue
            if job.beams is not None:
                return self._beam_group()
            if job.prepare is not None and not job.requests:
                return [self.pending.popleft()]
            if self.batching == "static" and not empty:
                return []
            room = self.batch_size - len(self.batch) - len(self.batch.waiting)
            for index in range(job.admitted, min(len(job.requests), job.admitted + room)):
                request = job.requests[index]
                self.owners[request] = (job, index)
                self.batch.add(request)
                if job.stream:
                    job.pieces.append(TextPieces(self.generator.text, job.stop))
                job.admitted += 1
            if job.admitted < len(job.requests):
                return []
            self.pending.popleft()
        return []

    def _beam_group(self) -> list[Job]:
        """The beam search at the head of the queue and those waiting with its settings and
        stop strings, up to `batch_size` prompts in all (taken out of the queue)."""
        first = self.pending.popleft()
        key = (first.beams[1], first.stop)
        group, prompts = [first], len(first.beams[0])
        for job in list(self.pending):
            if (
                job.beams is not None
                and not job.cancelled
                and (job.beams[1], job.stop) == key
                and prompts + len(job.beams[0]) <= self.batch_size
            ):
                self.pending.remove(job)
                group.append(job)
                prompts += len(job.beams[0])
        return group

    def _step(self) -> None:
        try:
            events = self.batch.step()
        except Exception as err:  # the model failed: every request in the batch answers
            log.exception("seqgen serve: a decoding step failed")
            for job in {job for job, _ in self.owners.values()}:
                job.put(("error", err))
                _end(job, self.metrics, "error")
            self.owners.clear()
            self.batch = self.generator.batch(self.batch_size)
            return
        now = time.monotonic()
        for request, token in events:
            job, index = self.owners[request]
            if token is not None:
                self.metrics.tokens.inc()
                if job.first_token_at is None:
                    job.first_token_at = now
                    self.metrics.first_token.observe(now - job.arrived)
                if job.stream and (piece := job.pieces[index].add(token)):
                    job.put(("text", index, piece))
                continue
            del self.owners[request]
            self._finished(job, index, request)

    def _finished(self, job: Job, index: int, request: Request) -> None:
        try:
            if job.stream and request.finish_reason != "cancelled":
                if rest := job.pieces[index].finish():
                    job.put(("text", index, rest))
                output = job.pieces[index].text[: job.pieces[index].shown]
            elif job.finish is not None and request.finish_reason != "cancelled":
                output = job.finish(request)  # writes its files, between two steps
            else:
                output = self.generator.text(request.output, job.stop)
        except Exception as err:  # a file that could not be written: the request's error
            job.put(("error", err))
            output = None
        job.put(Done(index, output, request.finish_reason, request))
        job.remaining -= 1
        if job.remaining == 0:
            _end(job, self.metrics, "cancelled" if job.cancelled else "ok")

    def _prepare(self, job: Job) -> None:
        """Prepare a file job (outside the queue's lock) and put it back first in line."""
        try:
            request, job.finish = job.prepare(self.generator)
        except Exception as err:  # answered by the route (a 4xx for options that clash)
            job.put(("error", err))
            _end(job, self.metrics, "error")
            return
        job.requests = [request]
        with self.ready:
            self.pending.appendleft(job)

    def _beam_search(self, group: list[Job]) -> None:
        """One batched beam search over the prompts of `group` (equal settings), between two
        steps of the batch; it stops early only once every job in it is cancelled."""
        prompts = [prompt for job in group for prompt in job.beams[0]]
        settings = group[0].beams[1]

        def check(_ids) -> bool:
            if all(job.cancelled for job in group):
                raise Cancelled()
            return False

        self.metrics.running.set_function(lambda: len(prompts))
        try:
            outputs = self.generator.generate_many(
                prompts, batch_size=len(prompts), stop=group[0].stop, stop_fn=check, **settings
            )
        except Cancelled:
            for job in group:
                _end(job, self.metrics, "cancelled")
            return
        except Exception as err:  # answered by the route (a 4xx for options that clash)
            for job in group:
                job.put(("error", err))
                _end(job, self.metrics, "error")
            return
        finally:
            self.metrics.running.set_function(lambda: len(self.batch))
        now, start = time.monotonic(), 0
        for job in group:
            texts = outputs[start : start + len(job.beams[0])]
            start += len(job.beams[0])
            if job.cancelled:
                _end(job, self.metrics, "cancelled")
                continue
            self.metrics.first_token.observe(now - job.arrived)
            job.put(Done(0, texts, "stop"))
            _end(job, self.metrics, "ok")


def _end(job: Job, metrics: Metrics, outcome: str) -> None:
    """The job's last item; counted by outcome, its latency observed when it completed."""
    metrics.requests.labels("timeout" if job.timed_out else outcome).inc()
    if outcome == "ok":
        metrics.latency.observe(time.monotonic() - job.arrived)
    job.put(("end", outcome))


class BusyError(Exception):
    """The queue is full or the server is stopping: answered 503."""


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
        raise RequestError(
            str(err), f"options.{field_named(str(err), set(settings))}".removesuffix(".options")
        ) from None
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
    from seqgen.sample import file_settings

    settings = {k: v for k, v in options.items() if k not in ("stop", "stream", "seed")}

    def prepare(generator) -> tuple[Request, Callable[[Request], dict[str, Any]]]:
        with tempfile.TemporaryDirectory(prefix="seqgen-serve-") as tmp:
            ids = _prompt_ids(generator, prompt_bytes, Path(tmp))
            ids, prepared = file_settings(
                generator, ids, settings, _file_options(task, extras, Path(tmp)), most
            )
        request = generator.request(ids=ids, seed=options["seed"], **prepared)

        def finish(request: Request) -> dict[str, Any]:
            with tempfile.TemporaryDirectory(prefix="seqgen-serve-") as tmp:
                folder = Path(tmp)
                file_options = _file_options(task, extras, folder)
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


def _file_options(task, extras: dict[str, Any], folder: Path):
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
