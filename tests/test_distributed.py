"""Data-parallel rlkd-train: real `torchrun --nproc_per_node 2` jobs (gloo, CPU) on the 2-layer
tiny model, against one process with the same prompts and seeds."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from rlkd.cli import train_main
from rlkd.data import PromptSampler, build_pools, share_of
from rlkd.distributed import DistContext, rank_seed, rollout_seed

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.toml"
FAIL_ON_RANK = ROOT / "tests" / "fixtures" / "distributed" / "fail_on_rank.py"
VOLATILE = ("time/", "throughput/", "memory/")  # wall-clock and memory figures differ between any two runs
FSDP2 = "train.data_parallel=fsdp2"
HANG_GUARD_S = 900  # a job that has not ended by then hangs (the runs take well under a minute)


def _args(out: Path, model: Path, *overrides: str) -> list[str]:
    sets = [f"run.output_dir={json.dumps(str(out))}", "run.torch_threads=1",
            f"model.name_or_path={json.dumps(str(model))}", f"judge.name_or_path={json.dumps(str(model))}",
            "judge.abstain_threshold=0", "rollout.seed_per_prompt=true", "train.eval_every=0", *overrides]
    return [str(TINY)] + [a for s in sets for a in ("--set", s)]


def _torchrun(script: list[str], args: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *script, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S)


def _two_ranks(out: Path, model: Path, *overrides: str, resume: Path | None = None) -> Path:
    args = _args(out, model, *overrides) + (["--resume", str(resume)] if resume else [])
    done = _torchrun(["-m", "rlkd.cli", "train"], args)
    assert done.returncode == 0, done.stderr[-4000:]
    if FSDP2 in overrides:  # it sharded (the runs would be equal without, too)
        assert "rlkd: FSDP2: the policy sharded over 2 ranks (2 LlamaDecoderLayer units" in done.stdout, done.stdout[-2000:]
    return resume or _only_run(out)


def _one_process(out: Path, model: Path, *overrides: str, resume: Path | None = None) -> Path:
    args = _args(out, model, *overrides) + (["--resume", str(resume)] if resume else [])
    assert train_main(args) == 0
    return resume or _only_run(out)


def _only_run(out: Path) -> Path:
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    return run


def _steps(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in m.items() if not k.startswith(VOLATILE)} for m in rows if "event" not in m]


def _numbers(m: dict) -> dict:
    return {k: v for k, v in m.items() if isinstance(v, (int, float))}


def _others(m: dict) -> dict:
    return {k: v for k, v in m.items() if not isinstance(v, (int, float))}


def _assert_same_run(got: Path, want: Path, step: int = 2, atol: float = 1e-6) -> None:
    """Same metrics at every step and the same policy at `step` (float tolerance: AdamW moves a
    weight by about lr = 1e-5 per step, 10x the tolerance)."""
    g, w = _steps(got), _steps(want)
    assert [m["step"] for m in g] == [m["step"] for m in w] == list(range(1, step + 1))
    for a, b in zip(g, w):
        assert _others(a) == _others(b)  # null (NaN) and text values exactly
        assert _numbers(a) == pytest.approx(_numbers(b), rel=1e-4, abs=1e-6)
    name = f"step-{step:06d}"
    mine, theirs = (load_file(r / "checkpoints" / name / "model.safetensors") for r in (got, want))
    assert mine.keys() == theirs.keys()
    for key, tensor in theirs.items():
        torch.testing.assert_close(mine[key], tensor, rtol=0, atol=atol)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, tiny_model_path) -> Path:
    return _one_process(tmp_path_factory.mktemp("one"), tiny_model_path)


@pytest.mark.slow
def test_two_ranks_train_the_same_policy_as_one_process(tmp_path, tiny_model_path, one_process):
    two = _two_ranks(tmp_path, tiny_model_path)
    _assert_same_run(two, one_process)
    # rank 0 alone wrote the run: one metrics line per step, every sample of the step in samples.jsonl
    assert len(_steps(two)) == 2
    samples = [json.loads(line) for line in (two / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 * 2 * 2  # steps x prompts x G: both ranks' shares
    base = load_file(tiny_model_path / "model.safetensors")
    trained = load_file(two / "checkpoints" / "step-000002" / "model.safetensors")
    moved = max(float((trained[k].float() - base[k].float()).abs().max()) for k in base if k in trained)
    assert moved > 1e-6, "the policy did not move: the equivalence would be vacuous"


@pytest.mark.slow
def test_ppo_on_two_ranks_trains_the_same_policy_and_value_head_as_one_process(tmp_path, tiny_model_path):
    # PPO's value head is a second trainable module (its gradients must be averaged too) and its
    # advantages are whitened over the batch (over both ranks' tokens, not each rank's own).
    # Every prompt labeled: an unlabeled one has no teacher reference at 16 tokens, its judge
    # abstains, and a rank with no reward would whiten nothing (checked: with whitening per
    # rank this test then still passed; with both ranks rewarded, adv/min tells them apart).
    ppo = ("algorithm.name=ppo", "data.labeled_fraction=1.0")
    one = _one_process(tmp_path / "one", tiny_model_path, *ppo)
    two = _two_ranks(tmp_path / "two", tiny_model_path, *ppo)
    _assert_same_run(two, one)
    head = Path("checkpoints") / "step-000002" / "value_head" / "value_head.safetensors"
    mine, theirs = load_file(two / head), load_file(one / head)
    assert mine.keys() == theirs.keys() == {"linear.weight", "linear.bias"}
    for key, tensor in theirs.items():
        torch.testing.assert_close(mine[key], tensor, rtol=0, atol=1e-6)
    first = load_file(one / str(head).replace("step-000002", "step-000001"))
    assert float((first["linear.bias"] - theirs["linear.bias"]).abs().max()) > 1e-7, "the value head did not train"
    assert _steps(one)[0]["ppo/returns_mean"] == pytest.approx(_steps(two)[0]["ppo/returns_mean"], abs=1e-6)


@pytest.mark.slow
def test_a_two_rank_run_resumes_on_one_rank(tmp_path, tiny_model_path, one_process):
    run = _two_ranks(tmp_path, tiny_model_path, "train.steps=1")
    _one_process(tmp_path, tiny_model_path, "train.steps=2", resume=run)
    _assert_same_run(run, one_process)


@pytest.mark.slow
def test_a_one_rank_run_resumes_on_two_ranks(tmp_path, tiny_model_path, one_process):
    run = _one_process(tmp_path, tiny_model_path, "train.steps=1")
    _two_ranks(tmp_path, tiny_model_path, "train.steps=2", resume=run)
    _assert_same_run(run, one_process)


@pytest.mark.slow
def test_two_ranks_run_with_the_default_per_rank_seeding(tmp_path, tiny_model_path):
    # The command as a user runs it: `rollout.seed_per_prompt` at its default (false), so
    # each rank samples its share from its own seed (this once crashed on a negative seed).
    args = _args(tmp_path, tiny_model_path, "train.steps=1", "rollout.seed_per_prompt=false")  # the later --set wins
    done = _torchrun(["-m", "rlkd.cli", "train"], args)
    assert done.returncode == 0, done.stderr[-4000:]
    samples = [json.loads(line) for line in (_only_run(tmp_path) / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 * 2  # prompts x G, both ranks' shares


@pytest.mark.slow
def test_a_failing_rank_stops_the_job_with_its_error_and_a_checkpoint(tmp_path, tiny_model_path):
    # Rank 1 raises at the start of step 2; rank 0 is then waiting for it in a collective. The
    # job must end (no hang), report rank 1's error, and leave step 1 saved by rank 0's emergency
    # checkpoint (no periodic checkpoints in this run).
    args = _args(tmp_path, tiny_model_path, "train.steps=3", "train.checkpoint_every=0")
    done = _torchrun([str(FAIL_ON_RANK), "1", "2"], args)
    assert done.returncode != 0
    assert "simulated failure on rank 1 in step 2" in done.stderr
    state = json.loads((_only_run(tmp_path) / "checkpoints" / "step-000001" / "trainer_state.json").read_text())
    assert state["step"] == 1


@pytest.mark.slow
def test_fsdp2_on_two_ranks_trains_the_same_policy_as_one_process(tmp_path, tiny_model_path, one_process):
    # Sharded parameters, reduce-scattered gradients, a clip norm over DTensor shards, and
    # checkpoints and rollout syncs that gather the full state: the run must still be the
    # one-process run, and its checkpoint the single-process format.
    two = _two_ranks(tmp_path, tiny_model_path, FSDP2)
    _assert_same_run(two, one_process)
    saved = torch.load(two / "checkpoints" / "step-000002" / "training_state.pt", weights_only=True)["optimizer"]
    mine = torch.load(one_process / "checkpoints" / "step-000002" / "training_state.pt", weights_only=True)["optimizer"]
    assert saved["state"].keys() == mine["state"].keys() and saved["param_groups"] == mine["param_groups"]
    for index, state in mine["state"].items():
        for key, value in state.items():
            torch.testing.assert_close(saved["state"][index][key], value, rtol=1e-5, atol=1e-9)


@pytest.mark.slow
def test_a_two_rank_fsdp2_run_resumes_on_one_rank(tmp_path, tiny_model_path, one_process):
    run = _two_ranks(tmp_path, tiny_model_path, FSDP2, "train.steps=1")
    _one_process(tmp_path, tiny_model_path, FSDP2, "train.steps=2", resume=run)
    _assert_same_run(run, one_process)


@pytest.mark.slow
def test_fsdp2_with_lora_and_ppo_on_two_ranks_matches_one_process(tmp_path, tiny_model_path):
    # LoRA: frozen base weights and trainable adapters in one sharded layer, the adapters merged
    # into the rollout model from the gathered state; PPO: the value head as its own sharded unit
    # (every prompt labeled so that both ranks whiten rewarded tokens, as in the DDP PPO test).
    lora = ("model.lora_rank=4", "model.lora_alpha=8", "algorithm.name=ppo", "optim.lr=1e-3", "data.labeled_fraction=1.0")
    one = _one_process(tmp_path / "one", tiny_model_path, *lora)
    two = _two_ranks(tmp_path / "two", tiny_model_path, *lora, FSDP2)
    _assert_same_run(two, one)
    adapter = Path("checkpoints") / "step-000002" / "adapter" / "adapter_model.safetensors"
    head = Path("checkpoints") / "step-000002" / "value_head" / "value_head.safetensors"
    for name in (adapter, head):
        mine, theirs = load_file(two / name), load_file(one / name)
        assert mine.keys() == theirs.keys()
        for key, tensor in theirs.items():
            torch.testing.assert_close(mine[key], tensor, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_a_failing_rank_under_fsdp2_stops_the_job_without_a_hang(tmp_path, tiny_model_path):
    # No emergency checkpoint (the full state is a gather a dead peer would hang): the job ends
    # with rank 1's error, says so, and the periodic checkpoint of step 1 stands.
    args = _args(tmp_path, tiny_model_path, "train.steps=3", "train.checkpoint_every=1", FSDP2)
    done = _torchrun([str(FAIL_ON_RANK), "1", "2"], args)
    assert done.returncode != 0
    assert "simulated failure on rank 1 in step 2" in done.stderr
    assert "no emergency checkpoint with train.data_parallel = fsdp2" in done.stderr
    assert "the last periodic checkpoint stands: step 1" in done.stderr
    run = _only_run(tmp_path)
    assert json.loads((run / "checkpoints" / "step-000001" / "trainer_state.json").read_text())["step"] == 1
    assert not (run / "checkpoints" / "step-000002").exists()


# ---- pieces, in one process -------------------------------------------------------------------


def test_shares_are_disjoint_whole_prompts_covering_the_batch():
    for n in range(1, 9):
        for world in range(1, n + 1):
            shares = [share_of(n, r, world) for r in range(world)]
            assert [i for s in shares for i in range(n)[s]] == list(range(n))
            assert max(s.stop - s.start for s in shares) - min(s.stop - s.start for s in shares) <= 1


def test_every_rank_draws_the_same_batch_and_state():
    from rlkd.config import load_config

    cfg = load_config(TINY, ["rollout.prompts_per_step=4"])
    pools = build_pools(cfg.data, seed=0)
    samplers = [PromptSampler(pools, prompts_per_step=4, labeled_fraction=0.5, seed=0, rank=r, world_size=2)
                for r in range(2)]
    batches = [s.next_batch() for s in samplers]
    assert batches[0] == batches[1] and samplers[0].state_dict() == samplers[1].state_dict()
    assert [s.share for s in samplers] == [slice(0, 2), slice(2, 4)]
    with pytest.raises(ValueError, match="less than the number of ranks"):
        PromptSampler(pools, prompts_per_step=1, labeled_fraction=0.5, seed=0, rank=0, world_size=2)


def test_rollout_seeds_depend_on_seed_step_and_prompt_only():
    seeds = {rollout_seed(s, t, i) for s in range(3) for t in range(3) for i in range(3)}
    assert len(seeds) == 27 and rollout_seed(0, 1, 2) == rollout_seed(0, 1, 2)
    shares = {rank_seed(s, t, r) for s in range(3) for t in range(3) for r in range(3)}
    assert len(shares) == 27 and not shares & seeds and min(shares) >= 0


def test_one_process_context_is_the_identity():
    ctx = DistContext()
    assert not ctx.enabled and ctx.is_main
    values = (np.arange(3), [1, 2], None)
    assert ctx.gather(values) is values and ctx.sum(2.0, 3.0) == [2.0, 3.0] and ctx.decide(True)
    counts = torch.tensor([4.0, 5.0])
    assert ctx.global_counts(counts) is counts
