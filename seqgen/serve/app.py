"""The FastAPI application of `seqgen serve` (needs `pip install 'seqgen[serve]'`): its own
routes, request parsing within the server's bounds, and the answers to each request; the
guard before every route is `seqgen.serve.guard`."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import threading
from collections.abc import Callable
from contextlib import asynccontextmanager
from importlib.resources import files
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from seqgen.errors import SeqgenError
from seqgen.generation.decoding import GenerationOptions
from seqgen.serve.config import (
    RequestError,
    ServeConfig,
    available_extras,
    check_options,
    check_prompt,
    info,
    json_body,
    option_field,
    read_body,
)
from seqgen.serve.guard import Guard, error_response
from seqgen.serve.jobs import BusyError, Cancelled, Done, file_job, text_job
from seqgen.serve.openai_api import add_routes
from seqgen.serve.worker import Metrics, Worker
from seqgen.tasks import GeneratesFiles

log = logging.getLogger("seqgen")
REQUEST_KEYS = {"prompt", "options"}


def page() -> str:
    """The page at `/`, shipped with the package (no external scripts or fonts)."""
    return files("seqgen").joinpath("assets/serve.html").read_text()


def sse(payload: dict[str, Any], event: str | None = None) -> str:
    """One server-sent event: `data: {"text": ...}` for a piece of text, named events
    (`done`, `error`) around it."""
    return (f"event: {event}\n" if event else "") + f"data: {json.dumps(payload)}\n\n"


def answerable(err: BaseException, fields: set[str]) -> RequestError:
    """What the client is told of an error in its job (counted by the worker, not again):
    options that cannot work together are its to change (422); anything else is the
    server's, told without its details."""
    if isinstance(err, RequestError):
        told = err
    elif isinstance(err, ValueError | SeqgenError):
        told = RequestError(str(err), option_field(str(err), fields))
    elif isinstance(err, TimeoutError):
        told = RequestError(str(err), None, 504)
    elif isinstance(err, Cancelled):
        told = RequestError("cancelled (the server is stopping)", None, 503)
    else:
        log.error("seqgen serve: a request failed", exc_info=err)
        told = RequestError(f"internal error ({type(err).__name__})", None, 500)
    told.counted = True
    return told


class Served:
    """What the routes serve, once the checkpoint is loaded: `ready` is set then."""

    def __init__(self, config: ServeConfig, on_failure: Callable[[], None] | None) -> None:
        self.config, self.on_failure = config, on_failure
        self.metrics = Metrics()
        self.ready = threading.Event()
        self.generator = self.worker = None
        self.extras: list[str] = []
        self.failed: str | None = None

    def load(self, generator=None) -> None:
        """Load the checkpoint (unless given) and start the worker."""
        try:
            if generator is None:
                from seqgen.inference import load

                config = self.config
                generator = load(config.ckpt, **config.load_options())
            self.extras = available_extras(generator)
            self.worker = Worker(
                generator,
                self.config.batch_size,
                self.config.max_queue,
                self.metrics,
                self.config.batching,
            )
            self.generator = generator
            self.ready.set()
            log.info("serving %s (%s task)", generator.path, generator.task.name)
        except Exception as err:
            self.failed = str(err) if isinstance(err, SeqgenError) else repr(err)
            if self.on_failure is None:
                log.exception("seqgen serve: could not load %s", self.config.ckpt)
            else:
                self.on_failure()


def create_app(
    config: ServeConfig, generator=None, on_failure: Callable[[], None] | None = None
) -> FastAPI:
    """The app serving `config.ckpt`, or `generator` (a loaded checkpoint) where given: routes
    answer 503 until the checkpoint is loaded, in the background; `on_failure()` is called if
    it cannot be (else /health says "failed")."""
    served = Served(config, on_failure)
    if generator is not None:
        served.load(generator)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        if not served.ready.is_set():
            threading.Thread(target=served.load, name="seqgen-load", daemon=True).start()
        yield
        if served.worker is not None:
            served.worker.stop()

    # no /docs or /redoc: they load scripts from a CDN, and the page here must work offline
    app = FastAPI(
        title="seqgen", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan
    )
    app.state.served = served
    app.add_middleware(Guard, config=config)

    @app.exception_handler(RequestError)
    async def request_error(request: Request, err: RequestError) -> JSONResponse:
        if not getattr(err, "counted", False):  # never queued: refused or busy
            served.metrics.requests.labels("busy" if err.status == 503 else "rejected").inc()
        return error_response(request.url.path, err)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception) -> JSONResponse:
        return error_response(request.url.path, answerable(err, set()))

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return page()

    @app.get("/health")
    async def health() -> JSONResponse:
        if not served.ready.is_set():
            status = "failed" if served.failed else "loading"
            return JSONResponse({"status": status}, status_code=503)
        return JSONResponse({"status": "ready", "waiting": len(served.worker.pending)})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(served.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/info")
    async def get_info() -> dict[str, Any]:
        return info(ready(), config, served.extras)

    def ready():
        """The generator, once loaded; until then every model route answers 503."""
        if not served.ready.is_set():
            raise RequestError(
                "the model is still loading"
                if not served.failed
                else "the model could not be loaded",
                None,
                503,
            )
        return served.generator

    def submit(job) -> None:
        try:
            served.worker.submit(job)
        except BusyError as err:
            raise RequestError(str(err), None, 503) from None

    @app.post("/generate")
    async def generate(request: Request):
        generator = ready()
        task = generator.task
        files_task = isinstance(task, GeneratesFiles)
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "multipart/form-data":
            if not files_task:
                raise RequestError(
                    f"the {task.name} task takes a JSON prompt, not a file", "file", 415
                )
            prompt_bytes, raw = await _form(request)
            prompt = ""
        elif kind == "application/json":
            limit = config.max_upload_bytes if files_task else config.max_prompt_chars * 4 + 16_384
            data = json_body(await read_body(request, limit))
            if not isinstance(data, dict):
                raise RequestError("the body must be a JSON object", "body")
            unknown = sorted(set(data) - REQUEST_KEYS)
            if unknown:
                raise RequestError(f"unknown key {unknown[0]!r}; keys: prompt, options", unknown[0])
            prompt_bytes, raw = None, data.get("options", {})
            prompt = data.get("prompt", "")
            check_prompt(prompt, config, "prompt")
            if files_task and prompt:
                raise RequestError(
                    f"the {task.name} task takes its prompt as an uploaded "
                    "file (multipart field `file`)",
                    "prompt",
                )
        else:
            raise RequestError(
                "send application/json (or multipart/form-data with a file)", "content-type", 415
            )
        if files_task:
            result = await _file_request(request, generator, prompt_bytes, raw)
            output = result["files"]["output"]
            if output["media_type"] in request.headers.get("accept", ""):  # the file itself
                return Response(base64.b64decode(output["base64"]), media_type=output["media_type"])
            return result
        options = check_options(raw, config, task)
        if options["stream"] and options["num_beams"] > 1:
            raise RequestError("stream needs num_beams 1", "options.stream")
        job = text_job(generator, asyncio.get_running_loop(), [prompt], options)
        submit(job)
        names = option_names(task)
        if options["stream"]:
            return StreamingResponse(_events(job, names), media_type="text/event-stream")
        done = [item async for item in _results(job, request, names) if isinstance(item, Done)]
        output = done[0].output if job.requests else done[0].output[0]
        return {"output": output, "prompt": prompt, "task": task.name}

    async def _events(job, names: set[str]):
        try:
            async for item in job.results(config.request_timeout):
                if isinstance(item, tuple):
                    yield sse({"text": item[2]})
        except Exception as err:  # noqa: BLE001 (told to the client in the stream)
            yield sse({"error": str(answerable(err, names))}, "error")
        yield sse({}, "done")

    async def _results(job, request: Request, names: set[str]):
        try:
            async for item in job.results(config.request_timeout, request.is_disconnected):
                yield item
        except Exception as err:  # noqa: BLE001 (answered as JSON)
            raise answerable(err, names) from None

    async def _form(request: Request) -> tuple[bytes | None, Any]:
        await read_body(request, config.max_upload_bytes + 65_536, "file")  # + the fields
        try:
            form = await request.form(
                max_files=1, max_fields=4, max_part_size=config.max_upload_bytes
            )
        except Exception as err:  # the multipart parser's own errors
            raise RequestError(f"a malformed form ({err})", "body", 400) from None
        upload = form.get("file")
        prompt_bytes = None
        if upload is not None and not isinstance(upload, str):
            prompt_bytes = await upload.read(config.max_upload_bytes + 1)
            if len(prompt_bytes) > config.max_upload_bytes:
                raise RequestError(f"file over {config.max_upload_bytes:,} bytes", "file", 413)
        return prompt_bytes, json_body((form.get("options") or "{}").encode(), "options")

    async def _file_request(
        request: Request, generator, prompt_bytes: bytes | None, raw: Any
    ) -> dict[str, Any]:
        task = generator.task
        if not isinstance(raw, dict):
            raise RequestError("options must be a JSON object", "options")
        own = {f.name for f in dataclasses.fields(task.generate_options)}
        for name in task.local_files:
            if name in raw:
                raise RequestError(
                    f"{name} names a file of the server: not a request option", f"options.{name}"
                )
        extras = {k: v for k, v in raw.items() if k in own}
        for name in task.extra_files:
            if not isinstance(extras.get(name, False), bool):
                raise RequestError(
                    f"{name} must be true or false (the server names the file)", f"options.{name}"
                )
        try:
            task.generate_options(**{k: v for k, v in extras.items() if k not in task.extra_files})
        except (TypeError, ValueError) as err:
            raise RequestError(str(err), option_field(str(err), own)) from None
        options = check_options({k: v for k, v in raw.items() if k not in own}, config, task)
        job = file_job(
            asyncio.get_running_loop(), prompt_bytes, options, extras, task, config.max_new_tokens
        )
        submit(job)
        names = option_names(task)
        done = [item async for item in _results(job, request, names) if isinstance(item, Done)]
        return done[0].output

    add_routes(app, config, ready, submit, _results)
    return app


def option_names(task) -> set[str]:
    """The names an error message may name as the option at fault."""
    names = {f.name for f in dataclasses.fields(GenerationOptions)}
    if isinstance(task, GeneratesFiles):
        names |= {f.name for f in dataclasses.fields(task.generate_options)}
    return names
