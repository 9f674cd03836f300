"""rows/s of `rlkd-judge serve` at 1, 4 and 16 concurrent clients vs the in-process judge.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benches/bench_serve.py [--judge embedded:smollm2-135m-instruct]

Rows: the first --rows GSM8K test questions (shipped with rlkd) with their worked solutions as
responses, reference-free template. The in-process judge scores the same requests one after the
other (`judge.score` per request of --request-rows rows) and all rows in one call; the server
(a separate `rlkd-judge serve` process, same model, dtype and threads) gets the requests from N
client threads at once, each sending --request-rows rows per request until the work runs out.
Every figure is the best of --repeats runs (the machine is shared).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rows(n: int) -> tuple[list[str], list[str]]:
    with gzip.open(ROOT / "python" / "rlkd" / "datasets" / "gsm8k_test.jsonl.gz", "rt") as f:
        data = [json.loads(next(f)) for _ in range(n)]
    return [d["question"] for d in data], [d["answer"].replace("####", "The answer is") for d in data]


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as resp:
        return json.loads(resp.read())


def drive(url: str, requests: list[dict], clients: int) -> float:
    """Seconds for `clients` threads to send all `requests` (each thread takes the next one)."""
    lock, cursor = threading.Lock(), [0]

    def client() -> None:
        while True:
            with lock:
                if cursor[0] >= len(requests):
                    return
                body = requests[cursor[0]]
                cursor[0] += 1
            assert len(post(url + "/score", body)["rows"]) == len(body["responses"])

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--judge", default="embedded:smollm2-135m-instruct")
    p.add_argument("--rows", type=int, default=128)
    p.add_argument("--request-rows", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the judge (both sides)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--max-len", type=int, default=512)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()

    import torch

    from rlkd.integrations import load_judge
    from rlkd.weights import ensure_embedded_model

    if args.judge.startswith("embedded:"):
        args.judge = str(ensure_embedded_model(args.judge.split(":", 1)[1], progress=False))
    torch.set_num_threads(args.threads)
    q, r = rows(args.rows)
    k = args.request_rows
    requests = [{"questions": q[i:i + k], "responses": r[i:i + k]} for i in range(0, len(q), k)]
    results: dict[str, float] = {}

    judge = load_judge(args.judge, mode="reference_free", dtype=args.dtype, device="cpu", max_len=args.max_len)
    judge.score(q[:k], r[:k])  # warm-up
    best = min(_timed(lambda: [judge.score(b["questions"], b["responses"]) for b in requests]) for _ in range(args.repeats))
    results[f"in-process, {k} rows per call, sequential"] = len(q) / best
    print(f"in-process sequential: {len(q) / best:.1f} rows/s", flush=True)
    best = min(_timed(lambda: judge.score(q, r)) for _ in range(args.repeats))
    results["in-process, all rows in one call"] = len(q) / best
    del judge

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    server = subprocess.Popen(
        [sys.executable, "-m", "rlkd.judge_cli", "serve", args.judge, "--port", str(port), "--mode", "reference_free",
         "--dtype", args.dtype, "--device", "cpu", "--threads", str(args.threads), "--max-len", str(args.max_len),
         "--log-level", "warning"], env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(url + "/health", timeout=5).read()
                break
            except OSError:
                time.sleep(0.5)
        drive(url, requests[:2], 1)  # warm-up
        for clients in (1, 4, 16):
            best = min(drive(url, requests, clients) for _ in range(args.repeats))
            results[f"server, {clients} concurrent clients, {k} rows per request"] = len(q) / best
            print(f"server, {clients} clients: {len(q) / best:.1f} rows/s", flush=True)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)

    load = os.getloadavg()
    print(f"judge {args.judge}, {len(q)} rows (GSM8K test), dtype {args.dtype}, torch threads {args.threads}, "
          f"max_len {args.max_len}; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")  # fmt: skip
    print("| setting | rows/s |\n|---|---|")
    for name, value in results.items():
        print(f"| {name} | {value:.1f} |")
    return 0


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    raise SystemExit(main())
