"""The FastAPI application of `seqgen serve` (needs `pip install 'seqgen[serve]'`): routes,
request parsing within the server's bounds, and JSON errors that name the field at fault."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import queue
import tempfile
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from seqgen.decoding import GenerationOptions
from seqgen.errors import SeqgenError
from seqgen.serve import (
    RequestError,
    ServeConfig,
    Worker,
    check_options,
    field_named,
    file_job,
    page,
    sse,
    stream_job,
    text_job,
)
from seqgen.tasks import GeneratesFiles

log = logging.getLogger("seqgen")
REQUEST_KEYS = {"prompt", "options"}


def info(generator, config: ServeConfig, extras: list[str]) -> dict[str, Any]:
    meta, task = generator.meta, generator.task
    return {
        "task": task.name,
        "checkpoint": str(generator.path),
        "step": meta.get("step"),
        "tokens_trained": meta.get("train_tokens"),
        "model": meta["model"],
        "vocab_size": generator.tokenizer.vocab_size,
        "tokenizer": generator.tokenizer.kind,
        "generation_defaults": task.generation_defaults(),
        "prompt": "file" if isinstance(task, GeneratesFiles) else "text",
        "continues_prompt": task.continues_prompt,
        "file_options": _file_options(task),
        "extra_files": extras,
        "limits": {k: getattr(config, k) for k in ("max_new_tokens", "max_prompt_chars",
                                                   "max_upload_bytes", "max_queue")},  # fmt: skip
    }


def _file_options(task) -> dict[str, Any]:
    """A file task's own options and their defaults (extra files as true/false)."""
    if not isinstance(task, GeneratesFiles):
        return {}
    return {f.name: (False if f.name in task.extra_files else f.default)
            for f in dataclasses.fields(task.generate_options)}  # fmt: skip


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


def _refuse_declared(request: Request, limit: int, field: str) -> None:
    """A 413 before anything is read when the declared body is over `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(f"request body of {int(declared):,} bytes; this server accepts "
                           f"{limit:,}", field, 413)  # fmt: skip


async def _body(request: Request, limit: int) -> bytes:
    """The request body, refused past `limit` bytes before it is all read."""
    _refuse_declared(request, limit, "body")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestError(f"request body over {limit:,} bytes", "body", 413)
    return bytes(body)


def create_app(generator, config: ServeConfig) -> FastAPI:
    """The app serving `generator` (a loaded checkpoint); its worker thread starts now."""
    worker = Worker(generator, config)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        worker.stop()

    # no /docs or /redoc: they load scripts from a CDN, and the page here must work offline
    app = FastAPI(title="seqgen", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)  # fmt: skip
    app.state.worker = worker
    task = generator.task
    files_task = isinstance(task, GeneratesFiles)
    extras = available_extras(generator)
    option_names = {f.name for f in dataclasses.fields(GenerationOptions)}
    if files_task:
        option_names |= {f.name for f in dataclasses.fields(task.generate_options)}
    text_limit = config.max_prompt_chars * 4 + 16_384  # UTF-8 and the options around it

    @app.exception_handler(RequestError)
    async def request_error(_: Request, err: RequestError) -> JSONResponse:
        return JSONResponse({"error": str(err), "field": err.field}, status_code=err.status)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, err: Exception) -> JSONResponse:
        log.exception("seqgen serve: unexpected error")
        return JSONResponse({"error": f"internal error ({type(err).__name__})", "field": None},
                            status_code=500)  # fmt: skip

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return page()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "waiting": len(worker.pending)}

    @app.get("/info")
    async def get_info() -> dict[str, Any]:
        return info(generator, config, extras)

    @app.post("/generate")
    async def generate(request: Request):
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "multipart/form-data":
            if not files_task:
                raise RequestError(f"the {task.name} task takes a JSON prompt, not a file",
                                   "file", 415)  # fmt: skip
            prompt_bytes, raw = await _form(request)
        elif kind == "application/json":
            body = await _body(request, config.max_upload_bytes if files_task else text_limit)
            try:
                data = json.loads(body or b"{}")
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise RequestError(f"the body is not JSON ({err})", "body", 400) from None
            if not isinstance(data, dict):
                raise RequestError("the body must be a JSON object", "body")
            unknown = sorted(set(data) - REQUEST_KEYS)
            if unknown:
                raise RequestError(f"unknown key {unknown[0]!r}; keys: prompt, options",
                                   unknown[0])  # fmt: skip
            prompt_bytes, raw = None, data.get("options", {})
            prompt = data.get("prompt", "")
            if not isinstance(prompt, str):
                raise RequestError("prompt must be a string", "prompt")
            if files_task and prompt:
                raise RequestError(f"the {task.name} task takes its prompt as an uploaded "
                                   "file (multipart field `file`)", "prompt")  # fmt: skip
            if len(prompt) > config.max_prompt_chars:
                raise RequestError(f"prompt of {len(prompt):,} characters; this server accepts "
                                   f"{config.max_prompt_chars:,}", "prompt", 413)  # fmt: skip
        else:
            raise RequestError("send application/json (or multipart/form-data with a file)",
                               "content-type", 415)  # fmt: skip
        if files_task:
            result = await _file_request(prompt_bytes, raw)
            output = result["files"]["output"]
            if output["media_type"] in request.headers.get("accept", ""):  # the file itself
                return Response(base64.b64decode(output["base64"]),
                                media_type=output["media_type"])  # fmt: skip
            return result
        options = check_options(raw, config, task)
        if options["stream"]:
            pieces: queue.Queue = queue.Queue()
            _validate_stream(options)
            future = worker.submit(stream_job(prompt, options, pieces))

            async def events():
                loop = asyncio.get_running_loop()
                while (piece := await loop.run_in_executor(None, pieces.get)) is not None:
                    yield sse({"text": piece})
                if future.exception() is not None:  # the job has ended: None was its last put
                    yield sse({"error": str(future.exception())}, "error")
                yield sse({}, "done")

            return StreamingResponse(events(), media_type="text/event-stream")
        output = await _answer(worker.submit(text_job(prompt, options)))
        return {"output": output, "prompt": prompt, "task": task.name}

    def _validate_stream(options: dict[str, Any]) -> None:
        if options["num_beams"] > 1:
            raise RequestError("stream needs num_beams 1", "options.stream")

    async def _form(request: Request) -> tuple[bytes | None, Any]:
        _refuse_declared(request, config.max_upload_bytes + 65_536, "file")  # + the fields
        try:
            form = await request.form(max_files=1, max_fields=4,
                                      max_part_size=config.max_upload_bytes)  # fmt: skip
        except Exception as err:  # the multipart parser's own errors
            raise RequestError(f"a malformed form ({err})", "body", 400) from None
        upload = form.get("file")
        prompt_bytes = None
        if upload is not None and not isinstance(upload, str):
            prompt_bytes = await upload.read(config.max_upload_bytes + 1)
            if len(prompt_bytes) > config.max_upload_bytes:
                raise RequestError(f"file over {config.max_upload_bytes:,} bytes", "file", 413)
        try:
            raw = json.loads(form.get("options") or "{}")
        except json.JSONDecodeError as err:
            raise RequestError(f"options is not JSON ({err})", "options", 400) from None
        return prompt_bytes, raw

    async def _file_request(prompt_bytes: bytes | None, raw: Any) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise RequestError("options must be a JSON object", "options")
        own = {f.name for f in dataclasses.fields(task.generate_options)}
        for name in task.local_files:
            if name in raw:
                raise RequestError(f"{name} names a file of the server: not a request option",
                                   f"options.{name}")  # fmt: skip
        extras = {k: v for k, v in raw.items() if k in own}
        for name in task.extra_files:
            if not isinstance(extras.get(name, False), bool):
                raise RequestError(f"{name} must be true or false (the server names the file)",
                                   f"options.{name}")  # fmt: skip
        try:
            task.generate_options(**{k: v for k, v in extras.items()
                                     if k not in task.extra_files})  # fmt: skip
        except (TypeError, ValueError) as err:
            raise RequestError(str(err), f"options.{field_named(str(err), own)}") from None
        options = check_options({k: v for k, v in raw.items() if k not in own}, config, task)
        ids = await asyncio.get_running_loop().run_in_executor(None, _prompt_ids, prompt_bytes)
        job = file_job(ids, options, extras, task, config.max_new_tokens)
        return await _answer(worker.submit(job))

    def _prompt_ids(prompt_bytes: bytes | None) -> list[int]:
        """The prompt ids of an uploaded file, parsed once, here (no file: from nothing)."""
        if prompt_bytes is None:
            return generator.prompt_ids(None)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"prompt{task.output_suffix}"
            path.write_bytes(prompt_bytes)
            try:
                return generator.prompt_ids(str(path))
            except Exception as err:  # a parser's own error type for a corrupt file
                raise RequestError(f"not a readable {task.output_suffix or ''} file: {err}",
                                   "file") from None  # fmt: skip

    async def _answer(future) -> Any:
        try:
            return await asyncio.wrap_future(future)
        except RequestError:
            raise
        except (ValueError, SeqgenError) as err:  # options that cannot work together
            raise RequestError(str(err), f"options.{field_named(str(err), option_names)}"
                               .removesuffix(".options")) from None  # fmt: skip

    return app


class BackgroundServer:
    """`seqgen serve` in a thread of this process, on a free loopback port unless told: what
    the tests and the load benchmark run. `url`, `worker`; `close()` stops it."""

    def __init__(self, generator, config: ServeConfig, port: int | None = None) -> None:
        import socket
        import threading
        import time

        import uvicorn

        if port is None:
            with socket.socket() as probe:
                probe.bind((config.host, 0))
                port = probe.getsockname()[1]
        self.app = create_app(generator, config)
        self.worker = self.app.state.worker
        # log_config None: uvicorn leaves this process's logging as it is (its own setup binds
        # handlers to whatever sys.stderr is now, which a caller may close)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host=config.host, port=port,
                                                    log_config=None))  # fmt: skip
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"seqgen serve did not start on {config.host}:{port}")
            time.sleep(0.02)
        self.url = f"http://{config.host}:{port}"

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def serve(config: ServeConfig) -> None:
    """Load the checkpoint once and serve it until interrupted."""
    import uvicorn

    from seqgen.inference import load

    generator = load(config.ckpt, precision=config.precision, device=config.device)
    app = create_app(generator, config)
    log.info("serving %s (%s task) at http://%s:%d", generator.path, generator.task.name,
             config.host, config.port)  # fmt: skip
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning")
