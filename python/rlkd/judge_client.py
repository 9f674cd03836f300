"""`RemoteJudge`: a judge served by ``rlkd-judge serve``, with `SingleTokenJudge`'s `score()`.

rlkd-train uses it when ``judge.url`` is set (the judge on its own GPU, serving several
trainers); the TRL and verl integrations take it wherever they take a judge. Standard library
only. Rows go out in chunks of at most the server's ``max_request_rows``; a 429 (the server's
queue is full) is retried after a short, growing wait up to `retry_s` seconds in all; any other
error raises `RemoteJudgeError` with the server's one-line message.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import fields
from typing import Any, Sequence

import numpy as np

from rlkd.judge import JudgeError, JudgeScores, check_rows

__all__ = ["RemoteJudge", "RemoteJudgeError"]


class RemoteJudgeError(JudgeError):
    """The judge server is unreachable, refused the request, or failed."""


class RemoteJudge:
    def __init__(self, url: str, *, timeout_s: float = 600.0, retry_s: float = 300.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s, self.retry_s = timeout_s, retry_s
        info = self.health()
        self.needs_reference: bool = bool(info["needs_reference"])
        self.abstain_threshold: float = float(info["abstain_threshold"])
        self.model_name: str = info.get("model", "")
        self.max_request_rows: int = int(info["limits"]["max_request_rows"])

    def _request(self, path: str, body: Any | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode("utf-8")
        deadline, wait = time.monotonic() + self.retry_s, 0.05
        while True:
            req = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    return json.loads(resp.read())
            except urllib.error.HTTPError as err:
                if err.code == 429 and time.monotonic() + wait < deadline:
                    time.sleep(wait)  # back-pressure: the server's queue is full
                    wait = min(wait * 2, 2.0)
                    continue
                try:
                    message = json.loads(err.read()).get("error", "")
                except (ValueError, AttributeError):
                    message = ""
                raise RemoteJudgeError(f"judge server {self.url}{path}: HTTP {err.code}: {message or err.reason}") from None
            except (urllib.error.URLError, OSError) as err:
                reason = getattr(err, "reason", err)
                raise RemoteJudgeError(f"judge server {self.url}{path} unreachable: {reason}") from None

    def health(self) -> dict:
        return self._request("/health")

    def score(
        self,
        questions: Sequence[str],
        responses: Sequence[str],
        references: Sequence[str] | None = None,
        *,
        progress: bool = False,
    ) -> JudgeScores:
        n = check_rows(questions, responses, references, needs_reference=self.needs_reference)
        rows: list[dict] = []
        truncated = 0
        for start in range(0, n, self.max_request_rows):
            stop = min(start + self.max_request_rows, n)
            body = {"questions": list(questions[start:stop]), "responses": list(responses[start:stop])}
            if self.needs_reference:
                body["references"] = list(references[start:stop])  # type: ignore[index]
            answer = self._request("/score", body)
            rows += answer["rows"]
            truncated += int(answer.get("num_truncated", 0))
        return _to_scores(rows, truncated)


def _to_scores(rows: list[dict], num_truncated: int) -> JudgeScores:
    """A JudgeScores from the server's rows, filling whatever per-row fields this version has."""
    columns = {
        "reward": np.array([np.nan if r["reward"] is None else r["reward"] for r in rows], dtype=np.float32),
        "p_yes": np.array([r["p_yes"] for r in rows], dtype=np.float32),
        "p_no": np.array([r["p_no"] for r in rows], dtype=np.float32),
        "abstained": np.array([r["abstained"] for r in rows], dtype=bool),
        "gated": np.array([r.get("gated", False) for r in rows], dtype=bool),
        "num_truncated": num_truncated,
    }
    return JudgeScores(**{f.name: columns[f.name] for f in fields(JudgeScores) if f.name in columns})


def remote_judge_from_config(cfg) -> RemoteJudge:
    """rlkd-train's judge when ``judge.url`` is set, checked against the run's config."""
    from rlkd.config import ConfigError

    j = cfg.judge
    judge = RemoteJudge(j.url)
    served = "reference_guided" if judge.needs_reference else "reference_free"
    if served != j.mode:
        raise ConfigError(f"judge.url: the server at {j.url} serves a {served} judge but judge.mode is {j.mode!r}; "
                          "set judge.mode to match")  # fmt: skip
    if judge.needs_reference and (j.reference_source == "teacher" or cfg.data.labeled_fraction < 1):
        # Teacher references are generated by the judge model itself, which is not here.
        raise ConfigError("judge.url: a remote reference_guided judge needs a gold reference on every prompt: "
                          "use judge.mode = 'reference_free', or data.labeled_fraction = 1 with "
                          "judge.reference_source = 'gold'")  # fmt: skip
    return judge
