"""`rlkd-judge serve`: the real server (uvicorn on 127.0.0.1, ephemeral port) driven by concurrent
clients, against the in-process judge on the same model."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from rlkd.integrations import load_judge
from rlkd.judge import SingleTokenJudge
from rlkd.serve import Limits, build_app, make_server, split_openrlhf_query

ROOT = Path(__file__).resolve().parents[1]


def _rows(n: int, seed: int = 0) -> tuple[list[str], list[str], list[str]]:
    rng = np.random.default_rng(seed)
    questions, responses, references = [], [], []
    for i in range(n):
        a, b = (int(x) for x in rng.integers(2, 99, size=2))
        questions.append(f"Row {i}: what is {a} + {b}?")
        steps = " ".join(f"Step {k}: {a} plus {k} is {a + k}." for k in range(int(rng.integers(0, 12))))
        answer = a + b if i % 2 == 0 else a + b + 1
        responses.append(f"{steps} So {a} + {b} = {answer}. The answer is {answer}.")
        references.append(str(a + b))
    return questions, responses, references


@pytest.fixture(scope="module")
def judge(tiny_model_path) -> SingleTokenJudge:
    # abstain_threshold 0: a random model puts little mass on Yes/No; we want finite rewards here.
    return load_judge(str(tiny_model_path), mode="reference_free", dtype="float32", device="cpu",
                      abstain_threshold=0.0, max_tokens_per_batch=2048)  # fmt: skip


@pytest.fixture(scope="module")
def guided_judge(judge) -> SingleTokenJudge:
    from rlkd.config import JudgeSection

    return SingleTokenJudge(judge.model, judge.tokenizer, template=JudgeSection().template, abstain_threshold=0.0)


@contextmanager
def serving(judge, limits: Limits = Limits(), **kwargs):
    """The real uvicorn server in a thread; yields its base URL; always shuts it down."""
    server = make_server(build_app(judge, limits, model_name="tiny", **kwargs), "127.0.0.1", 0)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        assert not thread.is_alive(), "server did not shut down"


def post(url: str, body, *, raw: bytes | None = None) -> tuple[int, dict]:
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


def _assert_rows_equal(rows: list[dict], expected, idx) -> None:
    got = np.array([r["reward"] for r in rows], dtype=np.float64)
    np.testing.assert_allclose(got, expected.reward[idx], rtol=0, atol=2e-5)
    np.testing.assert_allclose([r["p_yes"] for r in rows], expected.p_yes[idx], rtol=1e-4, atol=1e-9)
    assert [r["abstained"] for r in rows] == expected.abstained[idx].tolist()


@pytest.mark.parametrize("clients", [1, 16])
def test_concurrent_clients_get_the_in_process_scores(judge, clients):
    q, r, _ = _rows(48)
    expected = judge.score(q, r)
    chunks = [list(range(i, 48, clients)) for i in range(clients)]  # each client its own rows
    start = threading.Barrier(clients)

    def client(idx):
        start.wait()
        status, body = post(url + "/score", {"questions": [q[i] for i in idx], "responses": [r[i] for i in idx]})
        assert status == 200, body
        return idx, body["rows"]

    with serving(judge, Limits(batch_wait_s=0.02)) as url:
        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(client, chunks))
        health = get(url + "/health")
    for idx, rows in results:
        assert len(rows) == len(idx)
        _assert_rows_equal(rows, expected, idx)
    assert health["rows_scored"] == 48
    if clients > 1:  # requests of different clients shared forward batches
        assert health["batches"] < clients


def test_openrlhf_remote_rm_protocol(guided_judge):
    q, r, ref = _rows(6)
    expected = guided_judge.score(q, r, ref)
    prompts = [f"<|im_start|>user\n{x}<|im_end|>\n<|im_start|>assistant\n" for x in q]
    queries = [p + resp + "<|im_end|>\n<|endoftext|>" for p, resp in zip(prompts, r)]
    # The judge reads the prompt as the question (plain text), the response without end markers.
    expected = guided_judge.score(prompts, r, ref)
    with serving(guided_judge) as url:
        status, body = post(url + "/get_reward", {"query": queries, "prompts": prompts, "labels": [int(x) for x in ref]})
    assert status == 200, body
    np.testing.assert_allclose(body["rewards"], expected.reward, atol=2e-5)
    assert body["scores"] == body["rewards"]
    assert set(body["extra_logs"]) >= {"p_yes", "abstained"} and len(body["extra_logs"]["p_yes"]) == 6


def test_split_openrlhf_query_strips_only_end_markers():
    assert split_openrlhf_query("P: x = 2 <|im_end|>\n<|endoftext|>", "P:") == " x = 2"
    assert split_openrlhf_query("P: the answer is </s> 5", "P:") == " the answer is </s> 5"
    with pytest.raises(ValueError, match="does not start with its prompt"):
        split_openrlhf_query("other text", "P:")


def test_abstained_rows_are_null_with_a_reason_and_unscored_reward_for_openrlhf(judge):
    strict = SingleTokenJudge(judge.model, judge.tokenizer, template=judge_template(), abstain_threshold=1.0)
    q, r, _ = _rows(3)
    with serving(strict, unscored_reward=0.0) as url:
        status, body = post(url + "/score", {"questions": q, "responses": r})
        assert status == 200
        assert all(row["reward"] is None and row["abstained"] for row in body["rows"])
        assert all(row["reason"].startswith("abstained: P(Yes)+P(No)") for row in body["rows"])
        status, body = post(url + "/get_reward", {"query": [x + y for x, y in zip(q, r)], "prompts": q})
    assert status == 200 and body["rewards"] == [0.0, 0.0, 0.0]
    assert body["extra_logs"]["abstained"] == [1.0, 1.0, 1.0]


def judge_template() -> str:
    from rlkd.judge_cli import REFERENCE_FREE_TEMPLATE

    return REFERENCE_FREE_TEMPLATE


def test_burst_beyond_the_queue_gets_429_and_no_row_is_lost_or_duplicated(judge):
    q, r, _ = _rows(96, seed=1)
    expected = judge.score(q, r)
    clients, per_request = 24, 4
    start = threading.Barrier(clients)
    rejected = []

    def client(c):
        idx = list(range(c * per_request, (c + 1) * per_request))
        start.wait()
        for _attempt in range(500):  # bounded: every request is eventually accepted
            status, body = post(url + "/score", {"questions": [q[i] for i in idx], "responses": [r[i] for i in idx]})
            if status != 429:
                assert status == 200, body
                return idx, body["rows"]
            assert "queue full" in body["error"]
            rejected.append(c)
            time.sleep(0.02)
        raise AssertionError("request never accepted")

    limits = Limits(max_queue_rows=8, max_batch_rows=4, max_request_rows=4, batch_wait_s=0.0)
    with serving(judge, limits) as url:
        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(client, range(clients)))
        health = get(url + "/health")
    assert rejected, "a burst of 96 rows into an 8-row queue must see 429s"
    seen = sorted(i for idx, _ in results for i in idx)
    assert seen == list(range(96))  # every row answered exactly once ...
    for idx, rows in results:  # ... with its own scores
        assert len(rows) == per_request
        _assert_rows_equal(rows, expected, idx)
    assert health["rows_scored"] == 96 and health["queued_rows"] == 0


@pytest.mark.parametrize(
    "body, status, message",
    [
        (b"{not json", 400, "not valid JSON"),
        ([1, 2], 422, "must be a JSON object"),
        ({"responses": ["a"]}, 422, "missing field 'questions'"),
        ({"questions": "q", "responses": ["a"]}, 422, "'questions' must be a list"),
        ({"questions": ["q", 3], "responses": ["a", "b"]}, 422, "questions[1] must be a string"),
        ({"questions": ["q"], "responses": ["a", "b"]}, 422, "differ in length"),
        ({"questions": [], "responses": []}, 422, "no rows"),
        ({"questions": ["q"], "responses": ["a"], "extra": 1}, 422, "unknown field"),
        ({"questions": ["q"] * 9, "responses": ["a"] * 9}, 413, "at most 8 per request"),
        ({"questions": ["q"], "responses": ["x" * 101]}, 413, "responses[0] has 101 characters"),
        (b"[" + b" " * 5000 + b"]", 413, "at most 4096"),
    ],
)
def test_malformed_requests_get_4xx_with_a_message(judge, body, status, message):
    limits = Limits(max_request_rows=8, max_queue_rows=16, max_field_chars=100, max_body_bytes=4096)
    with serving(judge, limits) as url:
        raw = body if isinstance(body, bytes) else None
        got_status, got = post(url + "/score", body, raw=raw)
        assert (got_status, message in got["error"]) == (status, True), got
        # the server still works after a bad request
        assert post(url + "/score", {"questions": ["q"], "responses": ["a"]})[0] == 200


def test_reference_guided_server_requires_references(guided_judge):
    with serving(guided_judge) as url:
        status, body = post(url + "/score", {"questions": ["q"], "responses": ["a"]})
        assert status == 422 and "missing field 'references'" in body["error"]
        status, body = post(url + "/get_reward", {"query": ["qa"], "prompts": ["q"], "labels": [""]})
        assert status == 422 and "labels[0] is empty" in body["error"]
        health = get(url + "/health")
    assert health["needs_reference"] is True and health["fields"] == ["question", "reference", "response"]


def test_remote_judge_client_equals_in_process_judge(guided_judge):
    from rlkd.judge_client import RemoteJudge

    q, r, ref = _rows(20, seed=3)
    expected = guided_judge.score(q, r, ref)
    with serving(guided_judge, Limits(max_request_rows=8, max_queue_rows=8)) as url:
        remote = RemoteJudge(url)
        got = remote.score(q, r, ref)  # three requests of <= 8 rows
    assert remote.needs_reference
    np.testing.assert_allclose(got.reward, expected.reward, atol=2e-5)
    assert got.abstained.tolist() == expected.abstained.tolist() and got.reward.dtype == np.float32


def test_remote_judge_unreachable_is_a_one_line_error():
    from rlkd.judge_client import RemoteJudge, RemoteJudgeError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(RemoteJudgeError, match=f"judge server http://127.0.0.1:{port}/health unreachable"):
        RemoteJudge(f"http://127.0.0.1:{port}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_serves_and_shuts_down_cleanly_on_sigterm(tiny_model_path):
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlkd.judge_cli", "serve", str(tiny_model_path), "--port", str(port), "--mode",
         "reference_free", "--dtype", "float32", "--device", "cpu", "--abstain-threshold", "0", "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 600  # a fresh interpreter imports torch: minutes on a loaded 2-core box
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                health = get(url + "/health")
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "server did not come up"
                time.sleep(0.2)
        assert health["status"] == "ok" and health["needs_reference"] is False
        status, body = post(url + "/score", {"questions": ["What is 2+2?"], "responses": ["4"]})
        assert status == 200 and 0 <= body["rows"][0]["reward"] <= 1
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "listening on" in out and "stopped" in out


@pytest.mark.parametrize("flag, value, message", [("--max-batch-rows", "0", "--max-batch-rows must be >= 1"),
                                                   ("--port", "70000", "--port must be in 1..65535")])
def test_cli_bad_arguments_exit_2_with_one_line(tiny_model_path, flag, value, message, capsys):
    from rlkd.judge_cli import main

    assert main(["serve", str(tiny_model_path), flag, value]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_rlkd_train_scores_with_a_remote_judge(tmp_path, judge, tiny_model_path):
    from rlkd.cli import train_main

    with serving(judge) as url:
        args = [str(ROOT / "configs" / "tiny.toml"), "--set", f"run.output_dir={json.dumps(str(tmp_path))}",
                "--set", f"model.name_or_path={json.dumps(str(tiny_model_path))}", "--set", "judge.mode='reference_free'",
                "--set", f"judge.template={json.dumps(judge_template())}", "--set", f"judge.url={json.dumps(url)}",
                "--set", "train.steps=1", "--set", "train.eval_every=0", "--set", "run.torch_threads=1"]  # fmt: skip
        assert train_main(args) == 0
        health = get(url + "/health")
    assert health["rows_scored"] == 4  # prompts_per_step 2 x group_size 2, all through the server
    run = next(p for p in tmp_path.iterdir() if p.is_dir())
    step = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert 0 <= step["reward/judge"] <= 1


def test_rlkd_train_refuses_a_remote_judge_of_the_other_mode(tmp_path, guided_judge, tiny_model_path, capsys):
    from rlkd.cli import train_main

    with serving(guided_judge) as url:
        args = [str(ROOT / "configs" / "tiny.toml"), "--set", f"run.output_dir={json.dumps(str(tmp_path))}",
                "--set", f"model.name_or_path={json.dumps(str(tiny_model_path))}", "--set", "judge.mode='reference_free'",
                "--set", f"judge.template={json.dumps(judge_template())}", "--set", f"judge.url={json.dumps(url)}"]  # fmt: skip
        assert train_main(args) == 2
    assert "judge.url: the server at" in capsys.readouterr().err


def test_judge_url_must_be_http():
    from rlkd.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="judge.url: must be an http:// or https:// URL"):
        load_config(ROOT / "configs" / "tiny.toml", ["judge.url='judge-host:8000'"])
