"""`rlkd-judge serve JUDGE`: one single-token judge model behind HTTP, shared by many trainers.

Endpoints (JSON over HTTP, FastAPI on uvicorn):

- ``POST /score``: ``{"questions": [...], "responses": [...], "references": [...]?}`` ->
  ``{"rows": [{"reward", "p_yes", "p_no", "abstained", "gated", "reason"}, ...], "num_truncated"}``.
  ``reward`` is null where the judge abstained (never a silent 0); ``reason`` says why a row got
  no judge verdict (abstained, or the answer gate's reason), else null. ``references`` is
  required iff the judge's template shows a reference (``GET /health`` says which).
- ``POST /get_reward``: OpenRLHF's remote reward-model protocol (``--remote_rm_url``):
  ``{"query": [...], "prompts": [...], "labels": [...]}`` -> ``{"rewards", "scores",
  "extra_logs"}``. ``query`` is prompt + response as the policy's tokenizer decoded it; the
  response is the text after the prompt, minus trailing end-of-turn markers; ``labels`` are the
  references. OpenRLHF needs a number per row: an abstained row gets ``--unscored-reward``
  (default 0, the floor of the judge's range, so abstaining never pays) and
  ``extra_logs.abstained`` = 1.
- ``GET /health``: model, template fields, queue depth and limits.

Requests from all clients go into ONE bounded queue (counted in rows); a single worker takes
everything queued (up to ``--max-batch-rows``) into one ``judge.score`` call, so concurrent
clients share packed forward batches. A request that would overfill the queue gets 429 at once
(back-pressure: retry later) instead of waiting unboundedly. Bad input gets 4xx with a one-line
message. On SIGINT/SIGTERM uvicorn stops accepting, the queued rows are still scored and answered,
then the process exits 0.
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations at runtime.
import argparse
import asyncio
import json
import math
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, fields
from typing import Any, Sequence

import numpy as np

from rlkd._core import RlkdError

__all__ = ["Limits", "Batcher", "QueueFull", "build_app", "make_server", "main"]

# Markers a policy's tokenizer leaves at the end of a decoded response (OpenRLHF decodes with
# skip_special_tokens=False): they are not part of the answer the judge should read.
END_MARKERS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "</s>", "<eos>", "<|end|>")


class ServeError(RlkdError):
    """Bad server arguments."""


class QueueFull(Exception):
    """The bounded queue cannot take this request now (HTTP 429)."""


class ShuttingDown(Exception):
    """The server is draining its queue before exit (HTTP 503)."""


@dataclass(frozen=True)
class Limits:
    max_queue_rows: int = 4096  # rows waiting to be scored, all clients together
    max_batch_rows: int = 256  # rows in one judge.score call
    max_request_rows: int = 1024  # rows in one request
    max_field_chars: int = 32768  # characters in one question / response / reference
    max_body_bytes: int = 64 << 20  # bytes of one request body
    batch_wait_s: float = 0.002  # how long the worker waits for more requests to join a batch


# ----------------------------------------------------------------------------- batching


@dataclass
class _Job:
    questions: list[str]
    responses: list[str]
    references: list[str] | None
    future: asyncio.Future


def _columns(scores: Any, n: int) -> dict[str, np.ndarray]:
    """Every per-row array of a JudgeScores (reward, p_yes, p_no, abstained, and whatever the
    judge adds, e.g. the answer gate's ``gated``), by field name."""
    cols = {}
    for f in fields(scores):
        value = getattr(scores, f.name)
        if isinstance(value, (np.ndarray, list)) and len(value) == n:
            cols[f.name] = np.asarray(value)
    return cols


class Batcher:
    """One worker scoring the queued requests of all clients in shared batches."""

    def __init__(self, judge, limits: Limits) -> None:
        self.judge, self.limits = judge, limits
        self._jobs: deque[_Job] = deque()
        self.queued_rows = 0
        self._wakeup = asyncio.Event()
        self._closing = False
        self.batches = 0  # judge.score calls so far (for /health and tests)
        self.rows_scored = 0

    async def score(self, questions: list[str], responses: list[str], references: list[str] | None) -> dict:
        """Columns of this request's rows (plus num_truncated of the batch it rode in)."""
        if self._closing:
            raise ShuttingDown()
        n = len(responses)
        if self.queued_rows + n > self.limits.max_queue_rows:
            raise QueueFull(f"queue full: {self.queued_rows} rows waiting, this request has {n}, "
                            f"limit {self.limits.max_queue_rows}; retry later")  # fmt: skip
        job = _Job(questions, responses, references, asyncio.get_running_loop().create_future())
        self._jobs.append(job)
        self.queued_rows += n
        self._wakeup.set()
        return await job.future

    async def run(self) -> None:
        """The worker loop; returns once closed and the queue is empty."""
        while True:
            if not self._jobs:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self.limits.batch_wait_s > 0 and not self._closing:
                await asyncio.sleep(self.limits.batch_wait_s)  # let concurrent clients' requests join
            batch = [self._jobs.popleft()]
            rows = len(batch[0].responses)
            while self._jobs and rows + len(self._jobs[0].responses) <= self.limits.max_batch_rows:
                rows += len(self._jobs[0].responses)
                batch.append(self._jobs.popleft())
            self.queued_rows -= rows
            await self._score_batch(batch)

    async def _score_batch(self, batch: list[_Job]) -> None:
        questions = [q for j in batch for q in j.questions]
        responses = [r for j in batch for r in j.responses]
        references = [r for j in batch for r in j.references] if self.judge.needs_reference else None
        try:
            # A thread keeps the event loop answering (health, 429s) during the forward pass.
            scores = await asyncio.to_thread(self.judge.score, questions, responses, references)
        except Exception as err:  # noqa: BLE001 - every waiting client hears about the failure
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(err)
            return
        self.batches += 1
        self.rows_scored += len(responses)
        cols = _columns(scores, len(responses))
        start = 0
        for job in batch:
            stop = start + len(job.responses)
            if not job.future.done():  # a client that hung up has a cancelled future
                job.future.set_result({**{k: v[start:stop] for k, v in cols.items()},
                                       "num_truncated": int(getattr(scores, "num_truncated", 0))})  # fmt: skip
            start = stop

    def close(self) -> None:
        """Refuse new requests; the worker finishes what is queued, then returns."""
        self._closing = True
        self._wakeup.set()


# ----------------------------------------------------------------------------- request parsing


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _string_list(body: dict, key: str, limits: Limits, *, required: bool = True) -> list[str] | None:
    value = body.get(key)
    if value is None:
        if required:
            raise BadRequest(422, f"missing field {key!r}: a list of strings")
        return None
    if not isinstance(value, list):
        raise BadRequest(422, f"{key!r} must be a list of strings, got {type(value).__name__}")
    if len(value) > limits.max_request_rows:
        raise BadRequest(413, f"{key!r} has {len(value)} rows; at most {limits.max_request_rows} per request")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise BadRequest(422, f"{key}[{i}] must be a string, got {type(item).__name__}")
        if len(item) > limits.max_field_chars:
            raise BadRequest(413, f"{key}[{i}] has {len(item)} characters; at most {limits.max_field_chars}")
    return value


def _same_length(**columns: list | None) -> int:
    lengths = {k: len(v) for k, v in columns.items() if v is not None}
    if len(set(lengths.values())) > 1:
        raise BadRequest(422, "fields differ in length: " + ", ".join(f"{k}={n}" for k, n in lengths.items()))
    n = next(iter(lengths.values()))
    if n == 0:
        raise BadRequest(422, "no rows: send at least one")
    return n


def parse_score_request(body: Any, limits: Limits, needs_reference: bool) -> tuple[list[str], list[str], list[str] | None]:
    if not isinstance(body, dict):
        raise BadRequest(422, f"the body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - {"questions", "responses", "references"})
    if unknown:
        raise BadRequest(422, f"unknown field(s) {unknown}; allowed: questions, responses, references")
    questions = _string_list(body, "questions", limits)
    responses = _string_list(body, "responses", limits)
    references = _string_list(body, "references", limits, required=needs_reference)
    _same_length(questions=questions, responses=responses, references=references)
    return questions, responses, references if needs_reference else None


def split_openrlhf_query(query: str, prompt: str, end_markers: Sequence[str] = END_MARKERS) -> str:
    """The response inside OpenRLHF's query (prompt + response as decoded), end markers removed."""
    if not query.startswith(prompt):
        raise ValueError("the query does not start with its prompt")
    response, found = query[len(prompt):], False
    changed = True
    while changed:  # markers may repeat or stack ("<|im_end|>\n<|endoftext|>")
        changed = False
        stripped = response.rstrip()
        for marker in end_markers:
            if stripped.endswith(marker):
                response, changed, found = stripped[: -len(marker)], True, True
    return response.rstrip() if found else response


def parse_openrlhf_request(body: Any, limits: Limits, needs_reference: bool) -> tuple[list[str], list[str], list[str] | None]:
    if not isinstance(body, dict):
        raise BadRequest(422, f"the body must be a JSON object, got {type(body).__name__}")
    queries = _string_list(body, "query", limits)
    prompts = _string_list(body, "prompts", limits)
    labels = body.get("labels")
    if labels is not None:
        if not isinstance(labels, list):
            raise BadRequest(422, f"'labels' must be a list, got {type(labels).__name__}")
        labels = ["" if v is None else str(v) for v in labels]  # OpenRLHF labels may be numbers
        _string_list({"labels": labels}, "labels", limits)
    elif needs_reference:
        raise BadRequest(422, "missing field 'labels': this judge's template shows a reference answer")
    n = _same_length(query=queries, prompts=prompts, labels=labels)
    responses = []
    for i in range(n):
        try:
            responses.append(split_openrlhf_query(queries[i], prompts[i]))
        except ValueError as err:
            raise BadRequest(422, f"row {i}: {err}") from None
    if needs_reference:
        empty = next((i for i, v in enumerate(labels) if not v.strip()), None)
        if empty is not None:
            raise BadRequest(422, f"labels[{empty}] is empty: this judge's template shows a reference answer")
    return prompts, responses, labels if needs_reference else None


# ----------------------------------------------------------------------------- responses


def _float_or_none(x: float) -> float | None:
    return None if math.isnan(float(x)) else float(x)


def _reason(cols: dict[str, np.ndarray], i: int, threshold: float) -> str | None:
    if "gated" in cols and bool(cols["gated"][i]):
        why = cols["gate_reason"][i] if "gate_reason" in cols else None
        # rlkd.judge.GATE_CONTROL_TEXT (not imported: this module stays free of torch until a judge loads)
        return "gated: chat-control text" if why == "control_text" else "gated: no final answer"
    if bool(cols["abstained"][i]):
        mass = float(cols["p_yes"][i]) + float(cols["p_no"][i])
        return f"abstained: P(Yes)+P(No) = {mass:.3f} < {threshold}"
    return None


def score_rows(cols: dict[str, np.ndarray], threshold: float) -> list[dict]:
    n = len(cols["reward"])
    rows = []
    for i in range(n):
        row = {"reward": _float_or_none(cols["reward"][i]), "p_yes": float(cols["p_yes"][i]),
               "p_no": float(cols["p_no"][i]), "abstained": bool(cols["abstained"][i]),
               "gated": bool(cols["gated"][i]) if "gated" in cols else False,
               "reason": _reason(cols, i, threshold)}  # fmt: skip
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- app


def build_app(judge, limits: Limits = Limits(), *, model_name: str = "", unscored_reward: float = 0.0):
    """The FastAPI app serving `judge` (anything with `score()` and `needs_reference`)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app):
        batcher = Batcher(judge, limits)
        worker = asyncio.create_task(batcher.run())
        state["batcher"] = batcher
        try:
            yield
        finally:
            batcher.close()  # drain: queued rows are still scored and answered
            await worker

    app = FastAPI(title="rlkd judge", lifespan=lifespan)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    async def read_json(request: Request) -> Any:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
            raise BadRequest(413, f"body of {declared} bytes; at most {limits.max_body_bytes}")
        body = b""
        async for chunk in request.stream():  # bounded even without a Content-Length
            body += chunk
            if len(body) > limits.max_body_bytes:
                raise BadRequest(413, f"body over {limits.max_body_bytes} bytes")
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise BadRequest(400, f"the body is not valid JSON: {err}") from None

    async def scored(parse, request: Request):
        try:
            q, r, ref = parse(await read_json(request), limits, judge.needs_reference)
            return await state["batcher"].score(q, r, ref), None
        except BadRequest as err:
            return None, error(err.status, err.message)
        except QueueFull as err:
            return None, JSONResponse({"error": str(err)}, status_code=429, headers={"Retry-After": "1"})
        except ShuttingDown:
            return None, error(503, "the server is shutting down")
        except Exception as err:  # noqa: BLE001 - a judge failure reaches the client as one line
            return None, error(500, f"judge failed: {type(err).__name__}: {err}")

    @app.post("/score")
    async def score(request: Request):
        cols, failure = await scored(parse_score_request, request)
        if failure is not None:
            return failure
        return {"rows": score_rows(cols, judge.abstain_threshold), "num_truncated": cols["num_truncated"]}

    @app.post("/get_reward")
    async def get_reward(request: Request):
        cols, failure = await scored(parse_openrlhf_request, request)
        if failure is not None:
            return failure
        reward = np.where(np.isnan(cols["reward"]), unscored_reward, cols["reward"]).astype(float).tolist()
        extra = {"p_yes": cols["p_yes"].astype(float).tolist(), "abstained": cols["abstained"].astype(float).tolist()}
        if "gated" in cols:
            extra["gated"] = cols["gated"].astype(float).tolist()
        return {"rewards": reward, "scores": reward, "extra_logs": extra}

    @app.get("/health")
    async def health():
        b = state.get("batcher")
        return {"status": "ok", "model": model_name, "needs_reference": judge.needs_reference,
                "fields": list(judge.prompt.fields) if hasattr(judge, "prompt") else None,
                "abstain_threshold": judge.abstain_threshold,
                "queued_rows": b.queued_rows if b else 0, "batches": b.batches if b else 0,
                "rows_scored": b.rows_scored if b else 0, "limits": limits.__dict__}  # fmt: skip

    return app


def make_server(app, host: str, port: int, *, log_level: str = "warning"):
    """A uvicorn server for `app` (run it with ``server.run()`` or in a thread)."""
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on",
                            timeout_graceful_shutdown=None)  # fmt: skip
    return uvicorn.Server(config)


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    from rlkd.config import JudgeSection
    from rlkd.judge_cli import add_judge_model_args

    d, lim = JudgeSection(), Limits()
    p = argparse.ArgumentParser(prog="rlkd-judge serve", description="Serve one single-token judge over HTTP: "
                                "POST /score (rlkd JSON), POST /get_reward (OpenRLHF --remote_rm_url), GET /health.")
    p.add_argument("judge", metavar="JUDGE", help="judge model: embedded:NAME, a local HF checkpoint dir or a hub id")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    p.add_argument("--mode", default="reference_guided", choices=("reference_guided", "reference_free"),
                   help="picks the default template (default: %(default)s, as training)")
    p.add_argument("--template", default=None, help="judge user message with {question}, {response} [, {reference}]")
    p.add_argument("--system-prompt", default=d.system_prompt, help="judge system message; '' = none (default: training's)")
    p.add_argument("--abstain-threshold", type=float, default=d.abstain_threshold, help="default: %(default)s")
    add_judge_model_args(p, d)
    p.add_argument("--max-queue-rows", type=int, default=lim.max_queue_rows, help="rows waiting, all clients; "
                   "beyond it requests get 429 (default: %(default)s)")
    p.add_argument("--max-batch-rows", type=int, default=lim.max_batch_rows, help="rows per judge call (default: %(default)s)")
    p.add_argument("--max-request-rows", type=int, default=lim.max_request_rows, help="default: %(default)s")
    p.add_argument("--max-field-chars", type=int, default=lim.max_field_chars, help="default: %(default)s")
    p.add_argument("--max-body-bytes", type=int, default=lim.max_body_bytes, help="default: %(default)s")
    p.add_argument("--batch-wait-ms", type=float, default=lim.batch_wait_s * 1000, help="default: %(default)s")
    p.add_argument("--unscored-reward", type=float, default=0.0, help="OpenRLHF reward of an abstained row (default: 0)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    return p


def limits_from_args(args: argparse.Namespace) -> Limits:
    for flag, value in (("--max-queue-rows", args.max_queue_rows), ("--max-batch-rows", args.max_batch_rows),
                        ("--max-request-rows", args.max_request_rows), ("--max-field-chars", args.max_field_chars),
                        ("--max-body-bytes", args.max_body_bytes)):  # fmt: skip
        if value < 1:
            raise ServeError(f"{flag} must be >= 1, got {value}")
    if args.max_request_rows > args.max_queue_rows:
        raise ServeError(f"--max-request-rows ({args.max_request_rows}) exceeds --max-queue-rows ({args.max_queue_rows}): "
                         "such a request could never be queued")  # fmt: skip
    if args.batch_wait_ms < 0:
        raise ServeError(f"--batch-wait-ms must be >= 0, got {args.batch_wait_ms}")
    if not 0 < args.port < 65536:
        raise ServeError(f"--port must be in 1..65535, got {args.port}")
    if not 0 <= args.abstain_threshold <= 1:
        raise ServeError(f"--abstain-threshold must be in [0, 1], got {args.abstain_threshold}")
    return Limits(max_queue_rows=args.max_queue_rows, max_batch_rows=args.max_batch_rows,
                  max_request_rows=args.max_request_rows, max_field_chars=args.max_field_chars,
                  max_body_bytes=args.max_body_bytes, batch_wait_s=args.batch_wait_ms / 1000)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    from rlkd.integrations import load_judge
    from rlkd.models import ModelSpecError, set_torch_threads

    args = build_parser().parse_args(argv)
    try:
        limits = limits_from_args(args)
        set_torch_threads(args.threads)
        t0 = time.perf_counter()
        judge = load_judge(args.judge, mode=args.mode, template=args.template, dtype=args.dtype, device=args.device,
                           system_prompt=args.system_prompt or None, abstain_threshold=args.abstain_threshold,
                           max_len=args.max_len, max_tokens_per_batch=args.max_tokens_per_batch)  # fmt: skip
    except (RlkdError, ModelSpecError, FileNotFoundError, ValueError) as err:
        print(f"rlkd-judge serve: error: {err}", file=sys.stderr)
        return 2
    print(f"rlkd-judge serve: {args.judge} loaded in {time.perf_counter() - t0:.1f}s "
          f"(fields: {', '.join(judge.prompt.fields)}); listening on http://{args.host}:{args.port}", flush=True)  # fmt: skip
    app = build_app(judge, limits, model_name=args.judge, unscored_reward=args.unscored_reward)
    # uvicorn handles SIGINT/SIGTERM (stop accepting, drain, lifespan shutdown), then re-raises
    # the signal into the handlers it found; these make that a normal exit 0 after the drain.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    make_server(app, args.host, args.port, log_level=args.log_level).run()
    print("rlkd-judge serve: stopped", flush=True)
    return 0
