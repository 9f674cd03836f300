"""The rlkd training loop, visible in one place: rollout -> score -> advantages -> update -> log.

Each step (P prompts, G samples each, n = P*G responses):

    batch      = sampler.next_batch()                        P examples, labeled:unlabeled at the set ratio
    rollouts   = rollout.generate(prompts, n=G)              n responses (+ sampling log-probs)
    r_vr       = verifier(gold, response)                    [n], NaN on unlabeled / Unknown
    r_judge    = judge(question, response[, reference])      [n], one forward, NaN if it abstained
    r          = mix(λ r_vr, μ r_judge, ρ r_rerank)          [n], renormalised on unlabeled prompts
    advantages = group_advantages(r, G) | GAE(values)        [n] or per token (PPO)
    update_policy(...)                                       clipped PG (+KL, +value loss)

What it simplifies, on purpose:
- Rollout and update alternate in one process (no asynchronous actors); with the `hf` backend the
  rollout model is a bf16 copy of the fp32 policy, re-synced after every update, exactly like
  the vLLM backend (AdamW steps on bf16 weights would vanish below bf16's 2^-8 resolution).
- The teacher's reference answers for unlabeled questions are generated lazily, once per
  question, and cached on disk (the judge model is the teacher).
- A sample whose reward is NaN (judge abstained, verifier Unknown) gets advantage 0 and is left
  out of its group's statistics and of the update; it is counted in the metrics.
"""

from __future__ import annotations

import copy
import json
import random
import shutil
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import transformers

from rlkd import _core
from rlkd.algorithms import (
    ValueHead,
    build_optimizer,
    build_scheduler,
    make_policy_batch,
    ppo_advantages,
    token_logprobs,
    update_policy,
)
from rlkd.calibration import JudgeCalibrator
from rlkd.checkpoint import (
    latest_checkpoint,
    load_training_state,
    restore_policy,
    restore_value_head,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from rlkd.config import Config, config_to_toml, render_template
from rlkd.data import Pools, PromptSampler, build_pools, share_of
from rlkd.distributed import DistContext, NullLog
from rlkd.distributed import init as init_distributed
from rlkd.evaluate import EvalResult, cached_greedy_pass_at_1, eval_cache_key, greedy_pass_at_1
from rlkd.judge import GATE_CONTROL_TEXT, GATE_HEDGE, JudgeScores, TeacherReferences, local_judge_from_config, no_gate_reasons
from rlkd.monitor import HackingAlert, HackingMonitor, MonitorLimits
from rlkd.metrics import auroc, same_correctness_share
from rlkd.plots import plot_run
from rlkd.models import (
    AdaptersOff,
    apply_lora,
    dtype_key,
    enable_gradient_checkpointing,
    load_causal_lm,
    load_sequence_classifier,
    model_cache_key,
    resolve_dtype,
    trainable_load_dtype,
    set_torch_threads,
)
from rlkd.rewards import EQUAL, UNLABELED, Reranker, RewardWeights, VRValues, mix_rewards, verifiable_rewards
from rlkd.rollout import HFRollout, hf_state_items, render_prompts
from rlkd.runlog import RunLog
from rlkd.significance import correct_by_id, format_comparison, paired_comparison


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def timed(times: dict[str, float], phase: str):
    start = time.perf_counter()
    yield
    times[f"time/{phase}_s"] = times.get(f"time/{phase}_s", 0.0) + time.perf_counter() - start


def peak_rss_gb() -> float:
    """This process's peak resident memory so far (VmHWM, Linux; NaN elsewhere), in GB."""
    try:
        with open("/proc/self/status") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError):
        return float("nan")
    return kib / 1e6


@contextmanager
def rng_preserved():
    """Whatever runs inside leaves the global RNGs as it found them (an eval must not change
    what the next training step samples, or eval_every would change the run)."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


@dataclass(frozen=True)
class StepBoundary:
    """The trainer between two steps, taken at one instant: `step` steps are finished (update
    applied, metrics logged), `sampler` draws step + 1's batch next and `rng` is the global RNG
    state step + 1 starts from. Weights, optimizer and scheduler only change inside a step, so a
    checkpoint of (them + this) is a state the uninterrupted run passed through."""

    step: int
    sampler: dict[str, Any]
    rng: dict[str, Any]
    calibration: dict[str, Any] | None = None  # the judge calibrator's labeled pairs (rlkd.calibration)


# Where a test may interrupt the loop (`Trainer.interrupt_hook`): after the update (weights
# ahead of the last finished step), after the step's metrics are logged (still not finished),
# before the in-loop eval, before a checkpoint (both after the step is finished). A stop at the
# first two completes the step (its update is done) before the emergency checkpoint.
INTERRUPT_POINTS = ("update", "log", "eval", "checkpoint")


class Trainer:
    """Holds the models and state of one run; `run()` is the loop.

    `interrupt_hook(point, step)`, when set, is called at each of `INTERRUPT_POINTS` (tests raise
    from it to check that every stop leaves a checkpoint that resumes to the same run).

    `dist`: this process's place in a torchrun job (rlkd.distributed; default: a single process)."""

    def __init__(self, cfg: Config, run_dir: Path, *, resume: bool = False, start_model: str | None = None,
                 start_model_key: str | None = None, pools: Pools | None = None,
                 interrupt_hook: Callable[[str, int], None] | None = None, dist: DistContext | None = None) -> None:
        """`start_model`: the policy's initial weights (the SFT checkpoint; default model.name_or_path);
        `start_model_key` names them for the eval cache (None: the start eval is not cached);
        `pools`: the problems RL samples and evaluates (default build_pools(cfg.data); train() passes
        them with data.labeled_filter applied)."""
        self.cfg = cfg
        self.run_dir = run_dir
        self.start_model = start_model or cfg.model.name_or_path
        self.start_model_key = start_model_key
        self.interrupt_hook = interrupt_hook
        self.dist = dist or DistContext()
        set_torch_threads(cfg.run.torch_threads)
        transformers.utils.logging.disable_progress_bar()  # ours shows the run; theirs would interleave
        seed_everything(cfg.run.seed)

        # Data first: a bad data file fails before any model loads.
        self.pools = pools if pools is not None else build_pools(cfg.data, seed=cfg.run.seed)
        self.sampler = PromptSampler(
            self.pools,
            prompts_per_step=cfg.rollout.prompts_per_step,
            labeled_fraction=cfg.data.labeled_fraction,
            seed=cfg.run.seed,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
        )
        w = cfg.rewards
        self.weights = RewardWeights(vr=w.vr_weight, judge=w.judge_weight, rerank=w.rerank_weight)
        self.vr_values = VRValues(correct=w.correct, wrong=w.wrong, no_answer=w.no_answer)

        # Policy: fp32 trained weights (all of them, or the LoRA adapters over a frozen base in the
        # compute dtype); rollouts run a copy in the compute dtype.
        m = cfg.model
        self.policy, self.tokenizer = load_causal_lm(self.start_model, dtype=trainable_load_dtype(m.dtype, m.lora_rank),
                                                     device=m.device)
        if m.lora_rank > 0:
            self.policy = apply_lora(self.policy, m.lora_rank, m.lora_alpha, list(m.lora_target_modules))
        if m.gradient_checkpointing:
            enable_gradient_checkpointing(self.policy)
        self.compute_dtype = resolve_dtype(m.dtype, m.device)
        self.rollout = self._make_rollout()

        a = cfg.algorithm
        self.ref_model = None
        if a.kl_coef > 0 and m.lora_rank > 0:  # the reference is the policy with its adapters off: no copy
            self.ref_model = AdaptersOff(self.policy)
        elif a.kl_coef > 0:  # no reference model at all when the KL term is off
            self.ref_model = copy.deepcopy(self.policy).to(self.compute_dtype).eval().requires_grad_(False)
        self.value_head = None
        if a.name == "ppo":
            self.value_head = ValueHead(self.policy.config.hidden_size).to(m.device)
        resume_from = self._restore_weights() if resume else None  # before the wrap: FSDP2 shards what it is given

        # DDP or FSDP2 under torchrun (train.data_parallel); before the optimizer: FSDP2 replaces the parameters.
        self.parallel = self.dist.wrap(self.policy, self.value_head, mode=cfg.train.data_parallel, param_dtype=self.compute_dtype)
        self.train_model = self.parallel.module  # what the update runs through
        if self.parallel.sharded:
            self._print(f"rlkd: FSDP2: {self.parallel.summary}")
        params = [p for p in self.policy.parameters() if p.requires_grad]
        if self.value_head is not None:
            params += list(self.value_head.parameters())
        o = cfg.optim
        self.optimizer = build_optimizer(params, lr=o.lr, weight_decay=o.weight_decay, betas=tuple(o.betas), eps=o.eps)
        self.scheduler = build_scheduler(self.optimizer, schedule=o.schedule, warmup_steps=o.warmup_steps, total_steps=cfg.train.steps)

        self.judge = None
        self.references = None
        j = cfg.judge
        if self.weights.judge > 0 and j.url:  # a judge on its own machine (`rlkd-judge serve`)
            from rlkd.judge_client import remote_judge_from_config

            self.judge = remote_judge_from_config(cfg)
        elif self.weights.judge > 0:  # transformers or one vLLM engine (judge.backend)
            self.judge, teacher = local_judge_from_config(cfg)
            if teacher is not None:
                cache = Path(j.reference_cache) if j.reference_cache else teacher_cache_path(cfg)
                self._new_references = lambda: TeacherReferences(  # noqa: E731 (re-read after rank 0 filled the cache)
                    teacher, self.judge.tokenizer, cache, system_prompt=m.system_prompt or None,
                    user_template=m.user_template, template_kwargs=dict(j.teacher_template_kwargs))
                self.references = self._new_references()
        self.reranker = None
        if self.weights.rerank > 0:
            r = cfg.reranker
            rr_model, rr_tok = load_sequence_classifier(r.name_or_path, dtype=r.dtype, device=r.device)
            self.reranker = Reranker(rr_model, rr_tok, max_len=r.max_len)

        mon = cfg.monitor
        self.monitor = HackingMonitor(MonitorLimits(
            threshold=mon.threshold, paid_no_answer=mon.paid_no_answer_limit, disagreement=mon.disagreement_limit,
            length_collapse_ratio=mon.length_collapse_ratio, baseline_steps=mon.baseline_steps, repeat=mon.repeat_limit,
            stop_on_alert=mon.stop_on_alert))  # fmt: skip
        self.calibrator = None
        if self.judge is not None and j.calibration != "none":
            self.calibrator = JudgeCalibrator(j.calibration, min_samples=j.calibration_min_samples)

        self._last_checkpoint_step = -1
        # True from the start of a step's update until the step is finished: the weights are then
        # ahead of `boundary`, and no checkpoint may be taken.
        self._updating = False
        # The metrics of a step whose update is done but which is not finished yet ({} once
        # logged), else None: a stop then completes the step instead of losing it.
        self._done: dict[str, float] | None = None
        self.log = RunLog(run_dir, tensorboard=cfg.log.tensorboard, wandb=cfg.log.wandb,
                          wandb_project=cfg.log.wandb_project, run_name=cfg.run.name) if self.dist.is_main else NullLog()
        self.boundary = StepBoundary(0, self.sampler.state_dict(), rng_state(), self._calibration_state())
        if resume_from is not None:
            self._resume(resume_from)

    @property
    def step(self) -> int:
        """Finished steps (read-only: `_finish_step` is the one place it advances)."""
        return self.boundary.step

    def _finish_step(self) -> None:
        """Step, sampler position and RNG move to the next step boundary together."""
        self.boundary = StepBoundary(self.boundary.step + 1, self.sampler.state_dict(), rng_state(),
                                     self._calibration_state())
        self._updating = False
        self._done = None

    def _calibration_state(self) -> dict[str, Any] | None:
        return self.calibrator.state_dict() if self.calibrator is not None else None

    def _print(self, line: str) -> None:
        if self.dist.is_main:
            print(line)

    def _at(self, point: str) -> None:
        if self.interrupt_hook is not None:
            self.interrupt_hook(point, self.step)

    # -- set-up helpers -------------------------------------------------------------------------

    def _make_rollout(self):
        r = self.cfg.rollout
        if r.backend == "vllm":
            from rlkd.rollout import VLLMRollout

            rollout = VLLMRollout(
                str(self.policy.name_or_path),
                dtype=str(self.compute_dtype).removeprefix("torch."),
                gpu_memory_utilization=r.vllm_gpu_memory_utilization,
                max_new_tokens=r.max_new_tokens,
                temperature=r.temperature,
                top_p=r.top_p,
                enable_sleep_mode=r.vllm_enable_sleep_mode,
                seed=self.cfg.run.seed,
                max_model_len=r.vllm_max_model_len,
            )
        else:
            # A plain model in the compute dtype that the sync fills with the policy's merged weights:
            # unmerged LoRA layers make each decoding step ~1.5x slower (measured on the 0.5B student).
            rollout_model = self._plain_copy_of_policy()
            rollout = HFRollout(rollout_model, self.tokenizer, max_new_tokens=r.max_new_tokens, temperature=r.temperature,
                                top_p=r.top_p, batch_size=r.batch_size)
        return rollout

    def _plain_copy_of_policy(self) -> torch.nn.Module:
        """The policy without LoRA layers, in the compute dtype, frozen (its weights: `_sync_rollout_weights`)."""
        if self.cfg.model.lora_rank > 0:
            model, _ = load_causal_lm(self.start_model, dtype=self.cfg.model.dtype, device=self.cfg.model.device)
        else:
            model = copy.deepcopy(self.policy).to(self.compute_dtype)
        return model.eval().requires_grad_(False)

    def _sync_rollout_weights(self) -> None:
        """After an update the rollout engine must sample from the new policy."""
        with self.parallel.full_policy() as policy:  # FSDP2: gathered on every rank
            if hasattr(self.rollout, "sync_weights"):
                self.rollout.sync_weights(policy)
                return
            target = self.rollout.model.state_dict()
            with torch.no_grad():  # the hf rollout model is the plain model: LoRA deltas merged in
                for name, tensor in hf_state_items(policy):
                    target[name].copy_(tensor)

    @contextmanager
    def _rollout_engine_asleep(self):
        """vLLM with sleep mode: its KV cache (and weights, offloaded to CPU) leave the GPU while the
        policy trains; woken before the weight sync. Other engines stay as they are."""
        engine = self.rollout
        if not getattr(engine, "enable_sleep_mode", False):
            yield
            return
        engine.sleep(level=1)
        try:
            yield
        finally:
            engine.wake_up()

    def _restore_weights(self) -> Path:
        """The policy's (and value head's) weights from the latest checkpoint; returns it."""
        ckpt = latest_checkpoint(self.run_dir)
        if ckpt is None:
            raise FileNotFoundError(f"--resume {self.run_dir}: no checkpoint under {self.run_dir / 'checkpoints'}")
        restore_policy(ckpt, self.policy)
        if self.value_head is not None:
            restore_value_head(ckpt, self.value_head)
        return ckpt

    def _resume(self, ckpt: Path) -> None:
        """The rest of the checkpoint's state (after `_restore_weights` and the optimizer's creation)."""
        state = load_training_state(ckpt, optimizer=self.parallel.loadable(self.optimizer), scheduler=self.scheduler)
        self.sampler.load_state_dict(state["sampler"])
        if self.calibrator is not None and state.get("calibration"):
            self.calibrator.load_state_dict(state["calibration"])
        self._sync_rollout_weights()
        self.boundary = StepBoundary(int(state["step"]), self.sampler.state_dict(), rng_state(), self._calibration_state())
        self._last_checkpoint_step = self.step
        self.log.truncate_from(self.step + 1)
        self._print(f"rlkd: resumed {self.run_dir} at step {self.step} from {ckpt.name}")

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> None:
        cfg = self.cfg
        from tqdm.auto import tqdm

        if self.references is not None:
            with self.dist.main_first():  # rank 0 fills the teacher's cache, the other ranks read it
                if not self.dist.is_main:
                    self.references = self._new_references()
                self._prefetch_references()
        if self.step == 0 and cfg.train.eval_every > 0:
            with rng_preserved():
                self.evaluate()
        bar = tqdm(total=cfg.train.steps, initial=self.step, desc="rlkd", unit="step",
                   disable=not (cfg.log.progress_bar and self.dist.is_main))
        budget_s = cfg.train.time_budget_min * 60
        started, first_step = time.perf_counter(), self.step
        try:
            while self.step < cfg.train.steps:
                elapsed = time.perf_counter() - started
                mean_step_s = elapsed / (self.step - first_step) if self.step > first_step else 0.0
                if self.dist.decide(budget_s and elapsed + mean_step_s > budget_s):  # the next step would end past it
                    self._print(f"rlkd: time budget of {cfg.train.time_budget_min:g} min: stopping after {self.step} "
                                f"steps ({elapsed / 60:.1f} min; a step takes {mean_step_s:.0f} s)")
                    break
                metrics = self._done = self.train_step()
                self._at("update")
                self.log.log_metrics(self.step + 1, metrics)
                self._done = {}
                self._at("log")
                if self.monitor.stop_reason:  # monitor.stop_on_alert: this step is logged and saved
                    self._finish_step()
                    raise HackingAlert(f"stopped by the hacking monitor (monitor.stop_on_alert): {self.monitor.stop_reason}")
                self._finish_step()
                bar.update(1)
                bar.set_postfix(
                    reward=f"{metrics['reward/total']:.3f}",
                    vr_acc=f"{metrics['vr/accuracy']:.2f}",
                    abstain=f"{metrics['judge/abstain_rate']:.2f}",
                    loss=f"{metrics['loss/total']:.3f}",
                )
                if cfg.train.eval_every > 0 and self.step % cfg.train.eval_every == 0 and self.step < cfg.train.steps:
                    self._at("eval")
                    with rng_preserved():
                        self.evaluate()
                if cfg.train.checkpoint_every > 0 and self.step % cfg.train.checkpoint_every == 0:
                    self._at("checkpoint")
                    self.checkpoint()
        except BaseException:  # Ctrl-C, OOM, a bad sample: keep the finished steps
            self._emergency_checkpoint()
            raise
        finally:
            bar.close()
        self.log.log_metrics(self.step, {"event": "train_done", "time/train_s": time.perf_counter() - started})
        if cfg.train.eval_every > 0:
            self.evaluate()
            self._compare_start_end()
        if cfg.train.save_final and self._last_checkpoint_step != self.step:
            self.checkpoint()
        self.log.close()
        if not self.dist.is_main:
            return
        print(training_curve(self.run_dir))
        for path in plot_run(self.run_dir):
            print(f"rlkd: plot {path}")
        if (self.run_dir / "comparison.json").exists():
            print(f"rlkd: start vs end   {self.run_dir / 'comparison.json'}")

    def _emergency_checkpoint(self) -> None:
        """Saves the last finished step unless it is saved already. Stopped after a step's
        update (logging, the monitor): the step is completed first (logged, finished), so
        nothing is lost whatever `train.checkpoint_every` is. Stopped inside the update: the
        weights are past the last finished step and cannot be saved; the last checkpoint stands.
        Under torchrun rank 0 saves alone, without a collective (every rank holds the same state),
        so a dead peer cannot make it hang."""
        if not self.dist.is_main:
            print(f"rlkd: rank {self.dist.rank} stopped; rank 0 saves the checkpoint", file=sys.stderr)
            return
        if self.parallel.sharded:  # the full state is an all-gather, which a dead peer would hang
            where = f"step {self._last_checkpoint_step}" if self._last_checkpoint_step >= 0 else "none"
            print(f"rlkd: stopped; no emergency checkpoint with train.data_parallel = fsdp2 (gathering the sharded "
                  f"state needs every rank alive); the last periodic checkpoint stands: {where}", file=sys.stderr)
            return
        if self._done is not None:
            if self._done:
                self.log.log_metrics(self.step + 1, self._done)
            self._finish_step()
        if self._updating or self.step == self._last_checkpoint_step:
            where = f"step {self._last_checkpoint_step}" if self._last_checkpoint_step >= 0 else "none"
            why = (f" (stopped inside step {self.step + 1}'s update: its weights are past step {self.step} and"
                   " cannot be saved)") if self._updating else ""
            hint = "" if self._last_checkpoint_step >= 0 else "; the run cannot be resumed (train.checkpoint_every > 0 makes it)"
            print(f"rlkd: stopped{why}; last checkpoint: {where}{hint}", file=sys.stderr)
            return
        try:
            with self.dist.sheltered():
                path = self.checkpoint()
        except Exception as err:  # e.g. a full disk: report it, and let the original error propagate
            print(f"rlkd: stopped; the emergency checkpoint failed too ({err})", file=sys.stderr)
            return
        print(f"rlkd: stopped; saved {path}; continue with --resume {self.run_dir}", file=sys.stderr)

    def train_step(self) -> dict[str, float]:
        cfg, G = self.cfg, self.cfg.rollout.group_size
        times: dict[str, float] = {}
        batch, mine = self.sampler.next_batch(), self.sampler.share  # mine: this rank's prompts (all in one process)
        examples = batch[mine]

        with timed(times, "rollout"):
            ro = self.dist.generate(self.rollout, self._student_prompts([e.question for e in examples]), G,
                                    seed=cfg.run.seed, step=self.step + 1, first_index=mine.start,
                                    per_prompt=cfg.rollout.seed_per_prompt)
        questions = [e.question for e in examples for _ in range(G)]
        golds = [e.answer for e in examples for _ in range(G)]
        labeled = np.array([g is not None for g in golds])

        with timed(times, "verify"):
            r_vr, verdicts = verifiable_rewards(
                golds, ro.response_text, self.vr_values, timeout_s=cfg.rewards.fallback_timeout_s,
                finished=ro.finished if cfg.rewards.truncated_needs_marker else None)
        r_judge = p_yes = p_no = abstained = references = scores = None
        if self.judge is not None:
            if self.judge.needs_reference:
                with timed(times, "teacher"):  # gold lookups, and the teacher's own answers (cached)
                    references = self._references(questions, golds)
            with timed(times, "judge"):
                scores = self._judge(questions, ro.response_text, references)
            r_judge, p_yes, p_no, abstained = scores.reward, scores.p_yes, scores.p_no, scores.abstained
        r_rerank = None
        if self.reranker is not None:
            with timed(times, "rerank"):
                r_rerank = self.reranker.score(questions, ro.response_text)
        mine_ro = ro
        if self.dist.enabled:  # from here on every rank sees the whole step, as one process would
            ro, r_vr, verdicts, scores, references, r_rerank = self.dist.gather(
                (ro, r_vr, verdicts, scores, references, r_rerank))
            questions, golds = [e.question for e in batch for _ in range(G)], [e.answer for e in batch for _ in range(G)]
            labeled = np.array([g is not None for g in golds])
            if scores is not None:
                r_judge, p_yes, p_no, abstained = scores.reward, scores.p_yes, scores.p_no, scores.abstained
            times = dict(zip(times, self.dist.max(*times.values())))  # a step waits for its slowest rank
        watch = self._watch_judge(questions, ro, scores, labeled, verdicts)
        if self.calibrator is not None:
            r_judge = watch.pop("_r_judge")
        rewards = mix_rewards(self.weights, labeled, vr=r_vr, judge=r_judge, rerank=r_rerank)

        self._updating = True
        rows = slice(mine.start * G, mine.stop * G)  # this rank's samples: its update is on them
        with timed(times, "update"), self._rollout_engine_asleep():
            update_stats, advantages = self._update(mine_ro, rewards[rows])
        advantages = self.dist.gather(advantages)
        with timed(times, "sync"):
            self._sync_rollout_weights()

        metrics = self._step_metrics(ro, rewards, r_vr, verdicts, r_judge, p_yes, abstained, r_rerank, advantages, labeled)
        if references is not None:
            metrics["judge/no_reference_rate"] = float(np.mean([r is None for r in references]))
        if scores is not None:  # responses spelling chat-control tokens, or boxing several answers: paid 0 by the gate
            metrics["judge/control_text_rate"] = float(np.mean(scores.gate_reason == GATE_CONTROL_TEXT))
            metrics["judge/hedge_rate"] = float(np.mean(scores.gate_reason == GATE_HEDGE))
        metrics.update(update_stats)
        metrics.update({k: v for k, v in watch.items() if not k.startswith("_")})
        metrics.update(times)
        new_tokens = sum(len(r) for r in ro.response_ids)
        metrics["throughput/rollout_tokens_per_s"] = new_tokens / max(times["time/rollout_s"], 1e-9)
        metrics["lr"] = self.scheduler.get_last_lr()[0]
        metrics["memory/peak_rss_gb"] = peak_rss_gb()
        if cfg.log.samples_every > 0 and (self.step + 1) % cfg.log.samples_every == 0:
            extracted = _core.extract_answers(ro.response_text)
            self.log.log_samples(self.step + 1, [
                {"question": q, "gold": g, "response": t, "finished": bool(ro.finished[i]), "extracted": extracted[i],
                 "reward": float(r), "vr": float(v), "verdict": int(d),
                 "reference": None if references is None else references[i],
                 "judge": None if r_judge is None else float(r_judge[i]),
                 "judge_mass": None if r_judge is None else float(p_yes[i] + p_no[i]),
                 "judge_gated": None if scores is None else bool(scores.gated[i]),
                 "judge_gate_reason": None if scores is None else scores.gate_reason[i],
                 "rerank": None if r_rerank is None else float(r_rerank[i]), "advantage": float(advantages[i])}
                for i, (q, g, t, r, v, d) in enumerate(zip(questions, golds, ro.response_text, rewards, r_vr, verdicts))
            ])
        return metrics

    def _watch_judge(self, questions, ro, scores, labeled: np.ndarray, verdicts: np.ndarray) -> dict:
        """Hacking monitors and judge calibration (rlkd.monitor, rlkd.calibration): metrics, printed
        warnings, and under "_r_judge" the (optionally calibrated) judge reward."""
        known = (verdicts != UNLABELED) & (verdicts != int(_core.Verdict.Unknown))
        correct = np.where(known, (verdicts == EQUAL).astype(np.float64), np.nan)
        r_raw = None if scores is None else scores.reward
        out, alerts = self.monitor.observe(
            self.step + 1, questions, ro.response_text, ro.response_lengths, r_raw, None if scores is None else scores.abstained,
            known, correct == 1.0, None if scores is None else scores.gated)  # fmt: skip
        for line in alerts if self.dist.is_main else ():
            print(line, file=sys.stderr)
        if self.calibrator is not None and scores is not None:
            r_judge, calib = self.calibrator.step(r_raw, labeled, correct, scores.gated,
                                                  apply_to_unlabeled=self.cfg.judge.calibrated_reward)  # fmt: skip
            out.update(calib, _r_judge=r_judge)
        return out

    def _student_prompts(self, questions: list[str]) -> list[list[int]]:
        m = self.cfg.model
        users = [render_template(m.user_template, question=q) for q in questions]
        return render_prompts(self.tokenizer, users, system_prompt=m.system_prompt or None)

    def _judge(self, questions: list[str], responses: list[str], references: list[str | None] | None):
        """The judge's scores; a sample whose question has no reference (the teacher gave no
        usable answer) is not judged: it abstains (NaN reward), counted as judge/no_reference_rate."""
        if references is None or all(r is not None for r in references):
            return self.judge.score(questions, responses, references)
        rows = [i for i, r in enumerate(references) if r is not None]
        n = len(responses)
        nan = np.full(n, np.nan, dtype=np.float32)
        reward, p_yes, p_no, abstained = nan.copy(), np.zeros(n, np.float32), np.zeros(n, np.float32), np.ones(n, bool)
        gated, gate_reason, truncated = np.zeros(n, bool), no_gate_reasons(n), 0
        if rows:
            part = self.judge.score([questions[i] for i in rows], [responses[i] for i in rows], [references[i] for i in rows])
            reward[rows], p_yes[rows], p_no[rows], abstained[rows] = part.reward, part.p_yes, part.p_no, part.abstained
            gated[rows], gate_reason[rows], truncated = part.gated, part.gate_reason, part.num_truncated
        return JudgeScores(reward=reward, p_yes=p_yes, p_no=p_no, abstained=abstained, num_truncated=truncated,
                           gated=gated, gate_reason=gate_reason)

    def _prefetch_references(self) -> None:
        """The teacher solves the unlabeled questions of the whole run up front, in batches (once
        per question, cached across runs): set-up time, reported, not paid inside the steps."""
        probe = PromptSampler(self.pools, prompts_per_step=self.cfg.rollout.prompts_per_step,
                              labeled_fraction=self.cfg.data.labeled_fraction, seed=self.cfg.run.seed)
        probe.load_state_dict(self.sampler.state_dict())
        use_gold = self.cfg.judge.reference_source == "gold"
        questions = sorted({e.question for _ in range(self.step, self.cfg.train.steps) for e in probe.next_batch()
                            if not (use_gold and e.answer is not None)})
        start = time.perf_counter()
        refs = self.references.get(questions, progress=self.cfg.log.progress_bar)
        took = time.perf_counter() - start
        missing = sum(r is None for r in refs)
        self._print(f"rlkd: teacher references for {len(questions)} unlabeled questions ({took:.0f} s; "
              f"{missing} without a finished, explicit answer: their judge term abstains)")
        self.log.log_metrics(self.step, {"event": "teacher_references", "time/teacher_s": took,
                                         "teacher/questions": len(questions), "teacher/no_reference": missing})

    def _references(self, questions: list[str], golds: list[str | None]) -> list[str | None]:
        """Gold answer where the config allows it and one exists, else the teacher's own answer
        (None where the teacher has no finished solution with an explicit answer)."""
        use_gold = self.cfg.judge.reference_source == "gold"
        need_teacher = [q for q, g in zip(questions, golds) if not (use_gold and g is not None)]
        teacher = dict(zip(need_teacher, self.references.get(need_teacher))) if need_teacher else {}
        return [g if (use_gold and g is not None) else teacher[q] for q, g in zip(questions, golds)]

    def _update(self, ro, rewards: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
        """Advantages, then one `update_policy` call; returns (stats, per-sample advantages [n])."""
        a, G = self.cfg.algorithm, self.cfg.rollout.group_size
        keep = np.flatnonzero(~np.isnan(rewards))  # NaN reward: no gradient, no say in its group
        advantages = np.zeros(len(rewards), dtype=np.float32)
        if a.name != "ppo":
            advantages = _core.group_advantages(rewards, G, estimator=a.name, eps=a.adv_eps)
        if a.name != "ppo" and a.kl_coef == 0:
            # Group baselines, no KL: a sample with advantage 0 (its group all-equal) has exactly zero
            # gradient, so it leaves the forward/backward (DAPO's dynamic-sampling filter); the loss is
            # normalised over the samples that teach. With none on any rank the update is skipped;
            # the LR schedule still counts the step.
            keep = keep[advantages[keep] != 0]
        trained = int(self.dist.sum(len(keep))[0])  # samples that teach, over every rank
        if trained == 0:
            with warnings.catch_warnings():  # a skipped first update: torch would warn of a step before optimizer.step()
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
                self.scheduler.step()
            return {"loss/total": float("nan"), "update/skipped": 1.0}, advantages
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        # A rank with nothing to learn from still takes part in the gradient all-reduce: one sample, masked out.
        rows = keep if len(keep) else np.array([0])
        batch = make_policy_batch(
            [ro.prompt_ids[i] for i in rows], [ro.response_ids[i] for i in rows], pad_id,
            seq_advantages=advantages[rows] if a.name != "ppo" else None,
            sampling_logprobs=[ro.logprobs[i] for i in rows],  # measured (update/rollout_logprob_diff), not trained on
        )
        if not len(keep):
            batch = batch.replace(response_mask=torch.zeros_like(batch.response_mask))
        accum = self.cfg.optim.grad_accum_steps or None  # None: every micro-batch of the step
        on_policy = a.epochs_per_batch == 1 and accum is None
        ppo_stats: dict[str, float] = {}
        with self._autocast():
            if a.name == "ppo" or not on_policy:
                batch, ppo_stats = self._fill_old_logprobs_and_advantages(batch, np.nan_to_num(rewards[rows]))
                if a.name == "ppo":
                    flat = batch.advantages.sum(dim=1) / batch.response_mask.sum(dim=1).clamp(min=1)
                    advantages[keep] = flat.numpy()[: len(keep)]  # per-sample mean of its token advantages, for logs
            stats = update_policy(
                self.train_model, self.optimizer, self._micro_batches(batch),
                scheduler=self.scheduler, epochs=a.epochs_per_batch, micro_batches_per_step=accum,
                clip_eps=a.clip_eps, aggregation=a.loss_aggregation, max_grad_norm=self.cfg.optim.grad_clip or None,
                temperature=self.cfg.rollout.temperature,
                kl_coef=a.kl_coef if a.name != "ppo" else 0.0,  # PPO folds the KL into its rewards
                kl_estimator=a.kl_estimator, ref_model=self.ref_model,
                value_head=self.value_head, value_coef=a.value_coef, value_clip=a.value_clip,
                on_policy=on_policy and a.name != "ppo",
                count_reduce=self.dist.global_counts if self.dist.enabled else None,
            )
        stats = {("loss/total" if k == "loss" else f"update/{k}"): v for k, v in stats.items()}
        stats.update(ppo_stats)
        stats = self.dist.mean_stats(stats, weight=float(batch.num_response_tokens))
        stats["update/trained_samples"] = float(trained)
        return stats, advantages

    def _micro_batches(self, batch):
        """The update's micro-batches; under torchrun every rank runs as many as the rank with the
        most (DDP's all-reduce waits for every rank's backward): the extra ones are masked out."""
        parts = batch.split(self.cfg.algorithm.micro_batch_size)
        most = int(self.dist.max(len(parts))[0])
        if most > len(parts):
            empty = parts[0].split(1)[0]
            parts += [empty.replace(response_mask=torch.zeros_like(empty.response_mask))] * (most - len(parts))
        return parts

    @torch.no_grad()
    def _fill_old_logprobs_and_advantages(self, batch, scores: np.ndarray):
        """One no-grad pass: old log-probs (and, for PPO, values, reference log-probs, GAE)."""
        a = self.cfg.algorithm
        old = torch.zeros_like(batch.old_logprobs)
        values = torch.zeros_like(batch.old_logprobs)
        ref = torch.zeros_like(batch.old_logprobs) if (a.name == "ppo" and self.ref_model is not None) else None
        device = next(self.policy.parameters()).device
        start = 0
        # The batch stays on the CPU; each micro-batch visits the device. Under torchrun every rank
        # runs as many (FSDP2 gathers the weights in each forward); the padding ones write nothing.
        for mb in self._micro_batches(batch):
            rows, width, padding = slice(start, start + len(mb)), mb.input_ids.shape[1], start >= len(batch)
            mb = mb.to(device)
            logp, _, hidden = token_logprobs(self.policy, mb.input_ids, mb.attention_mask,
                                             temperature=self.cfg.rollout.temperature, return_hidden=self.value_head is not None)
            v = self.value_head.token_values(hidden.float()) if self.value_head is not None else None
            if padding:
                continue
            old[rows, :width] = (logp * mb.response_mask).cpu()
            if v is not None:
                values[rows, :width] = v.cpu()
            if ref is not None:
                ref_logp, _, _ = token_logprobs(self.ref_model, mb.input_ids, mb.attention_mask,
                                                temperature=self.cfg.rollout.temperature)
                ref[rows, :width] = (ref_logp * mb.response_mask).cpu()
            start += len(mb)
        batch = batch.replace(old_logprobs=old)
        if a.name != "ppo":
            return batch, {}
        batch, stats = ppo_advantages(batch, scores, values, ref_logprobs=ref, kl_coef=a.kl_coef, gamma=a.gamma, lam=a.lam,
                                      reduce=self.dist.sum_tensor)  # whitened over every rank's tokens
        return batch, {f"ppo/{k}": v for k, v in stats.items()}

    def _autocast(self):
        """bf16/fp16 compute over the fp32 master weights (a no-op for float32)."""
        device_type = torch.device(self.cfg.model.device).type
        return torch.autocast(device_type, dtype=self.compute_dtype, enabled=self.compute_dtype != torch.float32)

    def _step_metrics(self, ro, rewards, r_vr, verdicts, r_judge, p_yes, abstained, r_rerank, advantages, labeled) -> dict[str, float]:
        G = self.cfg.rollout.group_size
        lengths = np.array([len(r) for r in ro.response_ids], dtype=np.float64)
        groups = rewards.reshape(-1, G)
        all_equal = [np.nanmax(g) == np.nanmin(g) if np.isfinite(g).any() else True for g in groups]
        lab = verdicts != UNLABELED
        correct = verdicts == EQUAL
        m: dict[str, float] = {
            "reward/total": float(np.nanmean(rewards)) if np.isfinite(rewards).any() else float("nan"),
            "reward/excluded_rate": float(np.isnan(rewards).mean()),
            "reward/vr": float(np.nanmean(r_vr)) if np.isfinite(r_vr).any() else float("nan"),
            "vr/accuracy": float(correct[lab].mean()) if lab.any() else float("nan"),
            "vr/labeled_samples": int(lab.sum()),
            "vr/unknown": int((verdicts == int(_core.Verdict.Unknown)).sum()),
            "vr/no_answer_rate": float((verdicts[lab] == int(_core.Verdict.NoAnswer)).mean()) if lab.any() else float("nan"),
            "adv/mean": float(np.mean(advantages)),
            "adv/std": float(np.std(advantages)),
            "adv/min": float(np.min(advantages)),
            "adv/max": float(np.max(advantages)),
            "adv/all_equal_group_rate": float(np.mean(all_equal)),
            "adv/same_correctness_share": same_correctness_share(advantages, lab, correct, G),
            "response/length_mean": float(lengths.mean()),
            "response/length_max": float(lengths.max()),
            "response/finished_rate": float(np.mean(ro.finished)),
        }
        if r_judge is not None:
            m["reward/judge"] = float(np.nanmean(r_judge)) if np.isfinite(r_judge).any() else float("nan")
            m["judge/abstain_rate"] = float(np.mean(abstained))
            m["judge/p_yes_mean"] = float(np.mean(p_yes))
            both = lab & ~np.isnan(r_judge)
            m["judge/vr_agreement"] = float(((r_judge[both] >= 0.5) == correct[both]).mean()) if both.any() else float("nan")
            m["judge/vr_auroc"] = auroc(r_judge[both], correct[both]) if both.any() else float("nan")
        else:
            m["judge/abstain_rate"] = float("nan")
        if r_rerank is not None:
            m["reward/rerank"] = float(np.mean(r_rerank))
        return m

    def evaluate(self) -> dict[str, float]:
        cfg = self.cfg
        if not self.pools.eval:
            return {}
        start = time.perf_counter()
        m = cfg.model
        rollout = HFRollout(self.rollout.model, self.tokenizer, max_new_tokens=cfg.train.eval_max_new_tokens,
                            batch_size=cfg.train.eval_batch_size) if isinstance(self.rollout, HFRollout) else self.rollout

        def run_eval():  # under torchrun each rank decodes its share and every rank gets all rows
            part = greedy_pass_at_1(
                rollout, self.tokenizer, self.pools.eval[share_of(len(self.pools.eval), self.dist.rank, self.dist.world_size)],
                system_prompt=m.system_prompt or None, user_template=m.user_template,
                max_new_tokens=cfg.train.eval_max_new_tokens, timeout_s=cfg.rewards.fallback_timeout_s,
                progress=cfg.log.progress_bar and self.dist.is_main,
            )
            return EvalResult.from_json({"rows": self.dist.gather(part.rows)}) if self.dist.enabled else part

        cached = False
        if self.step == 0 and self.start_model_key is not None:  # the start model's eval is the same every run
            key = eval_cache_key(self.start_model_key, self.pools.eval, system_prompt=m.system_prompt or None,
                                 user_template=m.user_template, max_new_tokens=cfg.train.eval_max_new_tokens, dtype=dtype_key(m.dtype, m.device),
                                 backend=cfg.rollout.backend)
            if self.dist.is_main:  # rank 0 reads and writes the cache, and tells the others whether to decode
                result, cached = cached_greedy_pass_at_1(key, lambda: self.dist.broadcast(True) and run_eval())
                if cached:
                    self.dist.broadcast(False)
            elif self.dist.broadcast(None):
                result = run_eval()
            if not self.dist.is_main:
                return {}
        else:
            result = run_eval()
        if not self.dist.is_main:
            return {}
        summary = result.summary()
        summary["time/eval_s"] = time.perf_counter() - start
        self.log.log_metrics(self.step, {"event": "eval", **summary})
        (self.run_dir / "eval").mkdir(exist_ok=True)
        (self.run_dir / "eval" / f"step-{self.step:06d}.json").write_text(json.dumps(result.to_json(), indent=1))
        lo, hi = summary["eval/pass@1_ci95_low"], summary["eval/pass@1_ci95_high"]
        print(f"rlkd: eval at step {self.step}: pass@1 {100 * result.pass_at_1:.1f}% (95% CI {100 * lo:.1f}-{100 * hi:.1f})"
              f" on {result.n}, finished {100 * summary['eval/finished_rate']:.0f}%, unknown {result.unknown}"
              + (" (cached)" if cached else ""))
        return summary

    def _compare_start_end(self) -> None:
        """Paired start-vs-end comparison on the same held-out problems -> comparison.json."""
        first, last = self.run_dir / "eval" / f"step-{0:06d}.json", self.run_dir / "eval" / f"step-{self.step:06d}.json"
        if not self.dist.is_main or self.step == 0 or not first.exists() or not last.exists():
            return
        cmp = paired_comparison(correct_by_id(json.loads(first.read_text())["rows"]),
                                correct_by_id(json.loads(last.read_text())["rows"]))
        cmp.update(start_step=0, end_step=self.step)
        (self.run_dir / "comparison.json").write_text(json.dumps(cmp, indent=1))
        print(f"rlkd: start vs end (step 0 -> {self.step}): {format_comparison(cmp)}")

    def checkpoint(self) -> Path:
        """Saves the state at the last step boundary (the weights must not be past it)."""
        if self._updating:
            raise RuntimeError("checkpoint requested mid-step: the weights are past the last finished step")
        b = self.boundary
        with self.parallel.full_state(self.optimizer) as full:  # FSDP2: a gather every rank takes part in
            self._last_checkpoint_step = b.step
            if full is None:  # rank 0 writes the full state, in the single-process format
                return self.run_dir / "checkpoints"
            return save_checkpoint(
                self.run_dir, b.step, model=full.policy, tokenizer=self.tokenizer, optimizer=full.optimizer,
                scheduler=self.scheduler, value_head=full.value_head,
                trainer_state={"step": b.step, "sampler": b.sampler, "calibration": b.calibration}, rng=b.rng,
                keep_last=self.cfg.train.keep_checkpoints or None,
            )


def prepare_run_dir(cfg: Config) -> Path:
    """runs/<name>-<timestamp>/ with the resolved config saved as config.toml."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(cfg.run.output_dir) / f"{cfg.run.name}-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=False)
    save_run_config(run_dir, cfg)
    return run_dir


def save_run_config(run_dir: Path, cfg: Config) -> None:
    """The run's resolved config, as `--resume` compares it."""
    (run_dir / "config.toml").write_text(config_to_toml(cfg))


def training_curve(run_dir: Path) -> str:
    """The run's per-step numbers as a small table (printed at the end of a run)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    cols = [("reward", "reward/total"), ("vr_acc", "vr/accuracy"), ("judge", "reward/judge"),
            ("finished", "response/finished_rate"), ("length", "response/length_mean"), ("step_s", None)]
    lines = ["rlkd: training curve", "  step " + " ".join(f"{name:>8}" for name, _ in cols)]
    for r in rows:
        if "event" in r:
            if r["event"] == "eval":
                lines.append(f"  eval at step {r['step']}: pass@1 {100 * r['eval/pass@1']:.1f}%")
            continue
        step_s = sum(v for k, v in r.items() if k.startswith("time/") and isinstance(v, (int, float)))
        values = [r.get(key) if key else step_s for _, key in cols]
        lines.append(f"  {r['step']:>4} " + " ".join(f"{v:>8.3f}" if isinstance(v, (int, float)) else f"{'-':>8}"
                                                     for v in values))
    return "\n".join(lines)


def teacher_cache_path(cfg: Config) -> Path:
    """The teacher's solutions are a function of the teacher, its prompt and its budget: one
    cache file per such combination, shared by every run."""
    import hashlib

    from rlkd.weights import cache_dir

    j, m = cfg.judge, cfg.model
    parts = [model_cache_key(j.name_or_path), dtype_key(j.dtype, j.device), m.system_prompt, m.user_template, j.teacher_max_new_tokens,
             list(j.teacher_template_kwargs)]
    if j.backend != "hf":  # vLLM's greedy answers differ from transformers' by bf16 rounding (hf keeps its key)
        parts.append(j.backend)
    key = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]
    return cache_dir() / "teacher" / f"{key}.jsonl"


def train(cfg: Config, *, resume_dir: Path | None = None) -> Path:
    """SFT warm-up (once, cached) when enabled, the labeled filter (data.labeled_filter), then the RL
    run. Under torchrun (rlkd.distributed) rank 0 runs the warm-up and the filter's screening and
    creates the run directory; the other ranks follow."""
    dist = init_distributed(cfg.run.device)
    pools = build_pools(cfg.data, seed=cfg.run.seed)  # a bad data file fails before any model loads
    start_model = cfg.model.name_or_path
    start_key = model_cache_key(start_model)  # the start eval and the screening are cached under it
    if cfg.sft.enabled:
        from rlkd.sft import warm_up

        with dist.main_first():  # rank 0 trains and caches it, the others load the cached result
            sft = warm_up(cfg)
        start_model, start_key = str(sft.path), f"sft:{sft.key}"
        if dist.is_main:
            print(f"rlkd: RL starts from the SFT checkpoint {sft.path}")
    if cfg.data.labeled_filter == "solved":
        from rlkd.screening import solved_labeled

        with dist.main_first():  # rank 0 screens and caches the answers, the others read them
            pools = replace(pools, labeled=solved_labeled(cfg, start_model, start_key, pools.labeled))
    new_dir = resume_dir is None and dist.is_main
    run_dir = resume_dir if resume_dir is not None else dist.broadcast(prepare_run_dir(cfg) if dist.is_main else None)
    try:
        trainer = Trainer(cfg, run_dir, resume=resume_dir is not None, start_model=start_model, start_model_key=start_key,
                          pools=pools, dist=dist)
    except BaseException:
        if new_dir:  # a failed start leaves no orphan run directory behind
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    if resume_dir is not None and dist.is_main:  # what this run now is (only budget and cadence keys may differ)
        save_run_config(run_dir, cfg)
    trainer.run()
    dist.close()
    return run_dir
