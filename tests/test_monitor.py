"""The hacking monitor on synthetic runs: quiet on a healthy run, firing on a collapse."""

import numpy as np

from rlkd.monitor import HackingMonitor, MonitorLimits

Q_SOLVED = "Janet has 3 apples and buys 2 more, so she has 3 + 2 = 5 apples.\n#### 5"


def _healthy(monitor, step, n=8):
    responses = [Q_SOLVED.replace("Janet", f"Janet{k // 2}") for k in range(n // 2)]
    responses += [Q_SOLVED.replace("5", str(step + k)) for k in range(n // 2)]
    r = np.array([0.9] * (n // 2) + [0.2] * (n // 2), dtype=np.float32)
    correct = np.array([True] * (n // 2) + [False] * (n // 2))
    questions = [f"q{k // 2}" for k in range(n // 2)] * 2  # G = 2: a right solution may repeat within its question
    return monitor.observe(step, questions, responses, [40] * n, r, np.zeros(n, bool), np.ones(n, bool), correct)


def test_quiet_on_a_healthy_run():
    monitor = HackingMonitor()
    for step in range(1, 6):
        m, warnings = _healthy(monitor, step)
        assert warnings == [] and m["monitor/alert"] == 0.0
        assert m["monitor/paid_no_answer_rate"] == 0.0 and m["monitor/judge_vr_disagreement"] == 0.0
        assert m["monitor/length_ratio"] == 1.0 and m["monitor/all_abstained"] == 0.0
    assert monitor.stop_reason is None


def test_fires_on_a_synthetic_collapse_to_an_answer_free_master_key():
    monitor = HackingMonitor(MonitorLimits(stop_on_alert=True))
    for step in range(1, 4):
        _healthy(monitor, step)
    # The policy found it: "Thought process:" (8 tokens), paid 0.8 by a gate-less judge, wrong per the verifier.
    n = 8
    m, warnings = monitor.observe(4, [f"q{k}" for k in range(n)], ["Thought process:"] * 7 + [Q_SOLVED], [8] * 7 + [40], np.full(n, 0.8, np.float32),
                                  np.zeros(n, bool), np.ones(n, bool), np.array([False] * 7 + [True]))
    for name in ("paid_no_answer", "disagreement", "length_collapse", "repeat"):
        assert m[f"monitor/{name}_alert"] == 1.0, name
    assert m["monitor/paid_no_answer_rate"] == 7 / 8
    assert m["monitor/judge_vr_disagreement"] == 7 / 8
    assert m["monitor/repeat_rate"] == 7 / 8
    assert m["monitor/length_ratio"] == (7 * 8 + 40) / 8 / 40
    assert m["monitor/alert"] == 1.0 and len(warnings) == 4 and all("WARNING step 4" in w for w in warnings)
    assert monitor.stop_reason == warnings[0]


def test_all_abstained_says_so_and_limits_of_zero_switch_alerts_off():
    monitor = HackingMonitor(MonitorLimits(paid_no_answer=0, disagreement=0, length_collapse_ratio=0, repeat=0))
    n = 4
    m, warnings = monitor.observe(1, list("abcd"), ["x"] * n, [3] * n, np.full(n, np.nan, np.float32), np.ones(n, bool),
                                  np.zeros(n, bool), np.zeros(n, bool))
    assert m["monitor/all_abstained"] == 1.0 and len(warnings) == 1 and "ABSTAINED on every sample" in warnings[0]
    assert np.isnan(m["monitor/judge_vr_disagreement"])  # no labeled samples
    m, warnings = monitor.observe(2, list("abcd"), ["Thought process:"] * n, [1] * n, np.ones(n, np.float32), np.zeros(n, bool),
                                  np.ones(n, bool), np.zeros(n, bool))
    assert warnings == [] and m["monitor/paid_no_answer_rate"] == 1.0 and m["monitor/repeat_rate"] == 1.0


def test_without_a_judge_only_length_is_watched():
    monitor = HackingMonitor()
    m, warnings = monitor.observe(1, ["q"], ["a"], [5], None, None, np.ones(1, bool), np.ones(1, bool))
    assert warnings == [] and set(m) == {"monitor/length_ratio", "monitor/alert"}
