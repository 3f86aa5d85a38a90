"""`seqgen serve`: one checkpoint behind an HTTP API (its own routes and OpenAI's
`/v1/completions`), Prometheus metrics and a small web page.

FastAPI + uvicorn: a well-kept, small stack whose request parsing, multipart uploads and
streaming responses are standard, and that runs offline with no build step (LitServe, as
litgpt uses, adds a process-per-worker layer that a CPU-bound single model does not need).

- `config`: the server's options and the checks that bound every request before it is
  queued (no FastAPI needed: `seqgen serve --help` works without the serve extra);
- `jobs`: what a request asks of the worker, and how its answer goes back;
- `worker`: the thread that owns the model (continuous batching) and the metrics;
- `app`: the FastAPI routes and the guard before them;
- `server`: starting and stopping (uvicorn; `seqgen serve` itself);
- `openai_api`: OpenAI's `/v1/completions` and `/v1/models`.
"""
