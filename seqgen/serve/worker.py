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

import logging
import threading
import time
from collections import deque
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from seqgen.generation.batch import Request
from seqgen.generation.text import TextPieces
from seqgen.serve.jobs import BusyError, Cancelled, Done, Job

log = logging.getLogger("seqgen")
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


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
                job.cancel()  # a part still waiting to be admitted is dropped, not ended again
                job.remaining = 0
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
            job.failed, output = True, None
        job.put(Done(index, output, request.finish_reason, request))
        job.remaining -= 1
        if job.remaining == 0:
            outcome = "error" if job.failed else "cancelled" if job.cancelled else "ok"
            _end(job, self.metrics, outcome)

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
