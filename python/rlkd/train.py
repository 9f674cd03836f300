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
import sys
import time
from contextlib import contextmanager
from pathlib import Path

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
from rlkd.checkpoint import latest_checkpoint, load_training_state, restore_policy, save_checkpoint
from rlkd.config import Config, config_to_toml, render_template
from rlkd.data import PromptSampler, build_pools
from rlkd.evaluate import greedy_pass_at_1
from rlkd.judge import SingleTokenJudge, TeacherReferences
from rlkd.monitor import HackingAlert, HackingMonitor, MonitorLimits
from rlkd.metrics import auroc
from rlkd.plots import plot_run
from rlkd.models import apply_lora, load_causal_lm, load_sequence_classifier, resolve_dtype, set_torch_threads
from rlkd.rewards import EQUAL, UNLABELED, Reranker, RewardWeights, VRValues, mix_rewards, verifiable_rewards
from rlkd.rollout import HFRollout, render_prompts
from rlkd.runlog import RunLog


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def timed(times: dict[str, float], phase: str):
    start = time.perf_counter()
    yield
    times[f"time/{phase}_s"] = times.get(f"time/{phase}_s", 0.0) + time.perf_counter() - start


class Trainer:
    """Holds the models and state of one run; `run()` is the loop."""

    def __init__(self, cfg: Config, run_dir: Path, *, resume: bool = False) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        set_torch_threads(cfg.run.torch_threads)
        transformers.utils.logging.disable_progress_bar()  # ours shows the run; theirs would interleave
        seed_everything(cfg.run.seed)

        # Data first: a bad data file fails before any model loads.
        self.pools = build_pools(cfg.data, seed=cfg.run.seed)
        self.sampler = PromptSampler(
            self.pools,
            prompts_per_step=cfg.rollout.prompts_per_step,
            labeled_fraction=cfg.data.labeled_fraction,
            seed=cfg.run.seed,
        )
        w = cfg.rewards
        self.weights = RewardWeights(vr=w.vr_weight, judge=w.judge_weight, rerank=w.rerank_weight)
        self.vr_values = VRValues(correct=w.correct, wrong=w.wrong, no_answer=w.no_answer)

        # Policy: fp32 master weights for the optimizer; rollouts run a copy in the compute dtype.
        m = cfg.model
        self.policy, self.tokenizer = load_causal_lm(m.name_or_path, dtype="float32", device=m.device)
        if m.lora_rank > 0:
            self.policy = apply_lora(self.policy, m.lora_rank, m.lora_alpha, list(m.lora_target_modules))
        if m.gradient_checkpointing:
            self.policy.gradient_checkpointing_enable()
        self.compute_dtype = resolve_dtype(m.dtype, m.device)
        self.rollout = self._make_rollout()

        a = cfg.algorithm
        self.ref_model = None
        if a.kl_coef > 0:  # no reference model at all when the KL term is off
            self.ref_model = copy.deepcopy(self.policy).to(self.compute_dtype).eval().requires_grad_(False)
        self.value_head = None
        if a.name == "ppo":
            self.value_head = ValueHead(self.policy.config.hidden_size).to(m.device)

        params = [p for p in self.policy.parameters() if p.requires_grad]
        if self.value_head is not None:
            params += list(self.value_head.parameters())
        o = cfg.optim
        self.optimizer = build_optimizer(params, lr=o.lr, weight_decay=o.weight_decay, betas=tuple(o.betas), eps=o.eps)
        self.scheduler = build_scheduler(self.optimizer, schedule=o.schedule, warmup_steps=o.warmup_steps, total_steps=cfg.train.steps)

        self.judge = None
        self.references = None
        j = cfg.judge
        if self.weights.judge > 0:
            judge_model, judge_tok = load_causal_lm(j.name_or_path, dtype=j.dtype, device=j.device)
            self.judge = SingleTokenJudge(
                judge_model,
                judge_tok,
                template=j.template,
                system_prompt=j.system_prompt or None,
                yes_words=j.yes_words,
                no_words=j.no_words,
                abstain_threshold=j.abstain_threshold,
                max_len=j.max_len,
                max_tokens_per_batch=j.max_tokens_per_batch,
                answer_gate=j.answer_gate,
            )
            if self.judge.needs_reference:
                teacher = HFRollout(judge_model, judge_tok, max_new_tokens=j.teacher_max_new_tokens, temperature=1.0, top_p=1.0,
                                    batch_size=cfg.rollout.batch_size)
                cache = Path(j.reference_cache) if j.reference_cache else run_dir / "teacher_references.jsonl"
                self.references = TeacherReferences(teacher, judge_tok, cache, system_prompt=m.system_prompt or None,
                                                    user_template=m.user_template)
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

        self.step = 0
        self._last_checkpoint_step = -1
        self._updating = False  # True while the policy's weights may be half-updated
        self._step_start_sampler = self.sampler.state_dict()
        self.log = RunLog(run_dir, tensorboard=cfg.log.tensorboard, wandb=cfg.log.wandb,
                          wandb_project=cfg.log.wandb_project, run_name=cfg.run.name)
        if resume:
            self._resume()

    # -- set-up helpers -------------------------------------------------------------------------

    def _make_rollout(self):
        r = self.cfg.rollout
        if r.backend == "vllm":
            from rlkd.rollout import VLLMRollout

            rollout = VLLMRollout(
                str(self.policy.name_or_path),
                dtype=self.cfg.model.dtype,
                gpu_memory_utilization=r.vllm_gpu_memory_utilization,
                max_new_tokens=r.max_new_tokens,
                temperature=r.temperature,
                top_p=r.top_p,
                enable_sleep_mode=r.vllm_enable_sleep_mode,
                seed=self.cfg.run.seed,
                max_model_len=r.vllm_max_model_len,
            )
        else:
            rollout_model = copy.deepcopy(self.policy).to(self.compute_dtype).eval().requires_grad_(False)
            rollout = HFRollout(rollout_model, self.tokenizer, max_new_tokens=r.max_new_tokens, temperature=r.temperature,
                                top_p=r.top_p, batch_size=r.batch_size)
        return rollout

    def _sync_rollout_weights(self) -> None:
        """After an update the rollout engine must sample from the new policy."""
        if hasattr(self.rollout, "sync_weights"):
            self.rollout.sync_weights(self.policy)
            return
        with torch.no_grad():  # the hf rollout model is a same-structure copy (LoRA included)
            for target, source in zip(self.rollout.model.state_dict().values(), self.policy.state_dict().values()):
                target.copy_(source)

    def _resume(self) -> None:
        ckpt = latest_checkpoint(self.run_dir)
        if ckpt is None:
            raise FileNotFoundError(f"--resume {self.run_dir}: no checkpoint under {self.run_dir / 'checkpoints'}")
        restore_policy(ckpt, self.policy)
        state = load_training_state(ckpt, optimizer=self.optimizer, scheduler=self.scheduler, value_head=self.value_head)
        self.step = self._last_checkpoint_step = int(state["step"])
        self.sampler.load_state_dict(state["sampler"])
        self._sync_rollout_weights()
        self.log.truncate_from(self.step + 1)
        print(f"rlkd: resumed {self.run_dir} at step {self.step} from {ckpt.name}")

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> None:
        cfg = self.cfg
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.train.steps, initial=self.step, desc="rlkd", unit="step", disable=not cfg.log.progress_bar)
        if self.step == 0 and cfg.train.eval_every > 0:
            self.evaluate()
        try:
            while self.step < cfg.train.steps:
                self._step_start_sampler = self.sampler.state_dict()
                metrics = self.train_step()
                self.step += 1
                self.log.log_metrics(self.step, metrics)
                if self.monitor.stop_reason:  # monitor.stop_on_alert: this step is logged and saved
                    raise HackingAlert(f"stopped by the hacking monitor (monitor.stop_on_alert): {self.monitor.stop_reason}")
                bar.update(1)
                bar.set_postfix(
                    reward=f"{metrics['reward/total']:.3f}",
                    vr_acc=f"{metrics['vr/accuracy']:.2f}",
                    abstain=f"{metrics['judge/abstain_rate']:.2f}",
                    loss=f"{metrics['loss/total']:.3f}",
                )
                if cfg.train.eval_every > 0 and self.step % cfg.train.eval_every == 0 and self.step < cfg.train.steps:
                    self.evaluate()
                if cfg.train.checkpoint_every > 0 and self.step % cfg.train.checkpoint_every == 0:
                    self.checkpoint()
        except BaseException:  # Ctrl-C, OOM, a bad sample: keep the finished steps
            self._emergency_checkpoint()
            raise
        finally:
            bar.close()
        if cfg.train.eval_every > 0:
            self.evaluate()
        if cfg.train.save_final and self._last_checkpoint_step != self.step:
            self.checkpoint()
        self.log.close()
        for path in plot_run(self.run_dir):
            print(f"rlkd: plot {path}")

    def _emergency_checkpoint(self) -> None:
        """Saves the last finished step unless it is saved already or the policy is mid-update."""
        if self._updating or self.step == self._last_checkpoint_step:
            where = f"step {self._last_checkpoint_step}" if self._last_checkpoint_step >= 0 else "no checkpoint yet"
            print(f"rlkd: stopped; last checkpoint: {where}", file=sys.stderr)
            return
        try:
            path = self.checkpoint(sampler_state=self._step_start_sampler)
        except Exception as err:  # e.g. a full disk: report it, and let the original error propagate
            print(f"rlkd: stopped; the emergency checkpoint failed too ({err})", file=sys.stderr)
            return
        print(f"rlkd: stopped; saved {path}; continue with --resume {self.run_dir}", file=sys.stderr)

    def train_step(self) -> dict[str, float]:
        cfg, G = self.cfg, self.cfg.rollout.group_size
        times: dict[str, float] = {}
        examples = self.sampler.next_batch()

        with timed(times, "rollout"):
            ro = self.rollout.generate(self._student_prompts([e.question for e in examples]), G)
        questions = [e.question for e in examples for _ in range(G)]
        golds = [e.answer for e in examples for _ in range(G)]
        labeled = np.array([g is not None for g in golds])

        with timed(times, "verify"):
            r_vr, verdicts = verifiable_rewards(golds, ro.response_text, self.vr_values, timeout_s=cfg.rewards.fallback_timeout_s)
        r_judge = p_yes = abstained = scores = None
        if self.judge is not None:
            with timed(times, "judge"):
                references = self._references(questions, golds) if self.judge.needs_reference else None
                scores = self.judge.score(questions, ro.response_text, references)
            r_judge, p_yes, abstained = scores.reward, scores.p_yes, scores.abstained
        watch = self._watch_judge(questions, ro, scores, labeled, verdicts)
        if self.calibrator is not None:
            r_judge = watch.pop("_r_judge")
        r_rerank = None
        if self.reranker is not None:
            with timed(times, "rerank"):
                r_rerank = self.reranker.score(questions, ro.response_text)
        rewards = mix_rewards(self.weights, labeled, vr=r_vr, judge=r_judge, rerank=r_rerank)

        self._updating = True
        with timed(times, "update"):
            update_stats, advantages = self._update(ro, rewards)
        with timed(times, "sync"):
            self._sync_rollout_weights()
        self._updating = False

        metrics = self._step_metrics(ro, rewards, r_vr, verdicts, r_judge, p_yes, abstained, r_rerank, advantages, labeled)
        metrics.update(update_stats)
        metrics.update({k: v for k, v in watch.items() if not k.startswith("_")})
        metrics.update(times)
        new_tokens = sum(len(r) for r in ro.response_ids)
        metrics["throughput/rollout_tokens_per_s"] = new_tokens / max(times["time/rollout_s"], 1e-9)
        metrics["lr"] = self.scheduler.get_last_lr()[0]
        if cfg.log.samples_every > 0 and (self.step + 1) % cfg.log.samples_every == 0:
            self.log.log_samples(self.step + 1, [
                {"question": q, "gold": g, "response": t, "reward": float(r),
                 "vr": float(v), "verdict": int(d), "judge": None if r_judge is None else float(r_judge[i]),
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
        out, warnings = self.monitor.observe(
            self.step + 1, questions, ro.response_text, ro.response_lengths, r_raw, None if scores is None else scores.abstained,
            known, correct == 1.0, None if scores is None else scores.gated)  # fmt: skip
        for line in warnings:
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

    def _references(self, questions: list[str], golds: list[str | None]) -> list[str]:
        """Gold answer where the config allows it and one exists, else the teacher's own answer."""
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
        if len(keep) == 0:
            return {"loss/total": float("nan"), "update/skipped": 1.0}, advantages
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        batch = make_policy_batch(
            [ro.prompt_ids[i] for i in keep], [ro.response_ids[i] for i in keep], pad_id,
            seq_advantages=advantages[keep] if a.name != "ppo" else None,
        )
        accum = self.cfg.optim.grad_accum_steps or None  # None: every micro-batch of the step
        on_policy = a.epochs_per_batch == 1 and accum is None
        ppo_stats: dict[str, float] = {}
        with self._autocast():
            if a.name == "ppo" or not on_policy:
                batch, ppo_stats = self._fill_old_logprobs_and_advantages(batch, rewards[keep])
                if a.name == "ppo":
                    flat = batch.advantages.sum(dim=1) / batch.response_mask.sum(dim=1).clamp(min=1)
                    advantages[keep] = flat.numpy()  # per-sample mean of its token advantages, for logs
            stats = update_policy(
                self.policy, self.optimizer, batch.split(a.micro_batch_size),
                scheduler=self.scheduler, epochs=a.epochs_per_batch, micro_batches_per_step=accum,
                clip_eps=a.clip_eps, aggregation=a.loss_aggregation, max_grad_norm=self.cfg.optim.grad_clip or None,
                temperature=self.cfg.rollout.temperature,
                kl_coef=a.kl_coef if a.name != "ppo" else 0.0,  # PPO folds the KL into its rewards
                kl_estimator=a.kl_estimator, ref_model=self.ref_model,
                value_head=self.value_head, value_coef=a.value_coef, value_clip=a.value_clip,
                on_policy=on_policy and a.name != "ppo",
            )
        stats = {("loss/total" if k == "loss" else f"update/{k}"): v for k, v in stats.items()}
        stats.update(ppo_stats)
        return stats, advantages

    @torch.no_grad()
    def _fill_old_logprobs_and_advantages(self, batch, scores: np.ndarray):
        """One no-grad pass: old log-probs (and, for PPO, values, reference log-probs, GAE)."""
        a = self.cfg.algorithm
        old = torch.zeros_like(batch.old_logprobs)
        values = torch.zeros_like(batch.old_logprobs)
        ref = torch.zeros_like(batch.old_logprobs) if (a.name == "ppo" and self.ref_model is not None) else None
        device = next(self.policy.parameters()).device
        start = 0
        for mb in batch.split(a.micro_batch_size):  # the batch stays on the CPU; each micro-batch visits the device
            rows, width = slice(start, start + len(mb)), mb.input_ids.shape[1]
            mb = mb.to(device)
            logp, _, hidden = token_logprobs(self.policy, mb.input_ids, mb.attention_mask,
                                             temperature=self.cfg.rollout.temperature, return_hidden=self.value_head is not None)
            old[rows, :width] = (logp * mb.response_mask).cpu()
            if self.value_head is not None:
                values[rows, :width] = self.value_head.token_values(hidden.float()).cpu()
            if ref is not None:
                ref_logp, _, _ = token_logprobs(self.ref_model, mb.input_ids, mb.attention_mask,
                                                temperature=self.cfg.rollout.temperature)
                ref[rows, :width] = (ref_logp * mb.response_mask).cpu()
            start += len(mb)
        batch = batch.replace(old_logprobs=old)
        if a.name != "ppo":
            return batch, {}
        batch, stats = ppo_advantages(batch, scores, values, ref_logprobs=ref, kl_coef=a.kl_coef, gamma=a.gamma, lam=a.lam)
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
        result = greedy_pass_at_1(
            self.rollout, self.tokenizer, self.pools.eval,
            system_prompt=cfg.model.system_prompt or None, user_template=cfg.model.user_template,
            max_new_tokens=cfg.train.eval_max_new_tokens, timeout_s=cfg.rewards.fallback_timeout_s,
        )
        summary = result.summary()
        summary["time/eval_s"] = time.perf_counter() - start
        self.log.log_metrics(self.step, {"event": "eval", **summary})
        (self.run_dir / "eval").mkdir(exist_ok=True)
        (self.run_dir / "eval" / f"step-{self.step:06d}.json").write_text(json.dumps({"summary": summary, "rows": result.rows}, indent=1))
        print(f"rlkd: eval at step {self.step}: pass@1 {result.pass_at_1:.3f} on {result.n} (unknown {result.unknown})")
        return summary

    def checkpoint(self, sampler_state: dict | None = None) -> Path:
        path = save_checkpoint(
            self.run_dir, self.step, model=self.policy, tokenizer=self.tokenizer, optimizer=self.optimizer,
            scheduler=self.scheduler, value_head=self.value_head,
            trainer_state={"step": self.step, "sampler": sampler_state or self.sampler.state_dict()},
            keep_last=self.cfg.train.keep_checkpoints or None,
        )
        self._last_checkpoint_step = self.step
        return path


def prepare_run_dir(cfg: Config) -> Path:
    """runs/<name>-<timestamp>/ with the resolved config saved as config.toml."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(cfg.run.output_dir) / f"{cfg.run.name}-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=False)
    (run_dir / "config.toml").write_text(config_to_toml(cfg))
    return run_dir


def train(cfg: Config, *, resume_dir: Path | None = None) -> Path:
    run_dir = resume_dir if resume_dir is not None else prepare_run_dir(cfg)
    trainer = Trainer(cfg, run_dir, resume=resume_dir is not None)
    trainer.run()
    return run_dir
