"""Starting and stopping `seqgen serve`: uvicorn with bounded connections and a graceful
stop, in this process's main thread (`serve`) or in a background thread (`BackgroundServer`,
for the tests and the load benchmark)."""

from __future__ import annotations

import logging
import threading

from seqgen.errors import SeqgenError
from seqgen.serve.app import create_app
from seqgen.serve.config import ServeConfig
from seqgen.serve.guard import LOOPBACK

log = logging.getLogger("seqgen")


class BackgroundServer:
    """`seqgen serve` in a thread of this process, on a free loopback port unless told: what
    the tests and the load benchmark run. `url`, `worker`; `close()` stops it."""

    def __init__(self, generator, config: ServeConfig, port: int | None = None) -> None:
        import socket
        import time

        import uvicorn

        if port is None:
            with socket.socket() as probe:
                probe.bind((config.host, 0))
                port = probe.getsockname()[1]
        self.app = create_app(config, generator)
        self.worker = self.app.state.served.worker
        # log_config None: uvicorn leaves this process's logging as it is (its own setup binds
        # handlers to whatever sys.stderr is now, which a caller may close)
        self.server = uvicorn.Server(uvicorn_config(self.app, config, port, log_config=None))
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


def uvicorn_config(app, config: ServeConfig, port: int, **settings):
    """uvicorn's settings: bounded connections, idle ones closed, a graceful stop."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=config.host,
        port=port,
        limit_concurrency=config.max_connections,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=config.shutdown_seconds,
        **settings,
    )


def serve(config: ServeConfig) -> None:
    """Serve `config.ckpt` until SIGTERM or Ctrl-C: /health says "loading" until the model is
    loaded (a checkpoint that cannot be loaded stops the server with its error); on the
    signal no request is taken, the running ones have `shutdown_seconds` to finish, the rest
    are cancelled, and the process exits 0."""
    import uvicorn

    if config.host not in LOOPBACK and not config.api_key:
        log.warning(
            "warning: seqgen serve listens on %s without an API key: anyone who "
            "can reach it can use it (give --api_key or SEQGEN_API_KEY)",
            config.host,
        )
    import signal

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame) -> None:
            super().handle_exit(sig, frame)
            if sig == signal.SIGTERM:  # a stop asked for: exit 0 once stopped, rather than
                self._captured_signals.remove(sig)  # by the signal uvicorn raises again

    app = create_app(config, on_failure=lambda: setattr(server, "should_exit", True))
    server = Server(uvicorn_config(app, config, config.port, log_level="warning"))
    log.info("seqgen serve: http://%s:%d (loading %s)", config.host, config.port, config.ckpt)
    server.run()
    if app.state.served.failed:
        raise SeqgenError(f"seqgen serve: {app.state.served.failed}")
