"""Config loading, validation errors (each naming its key and file:line), overrides, round trip."""

from __future__ import annotations

import dataclasses
import re

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlkd import RlkdError
from rlkd.config import (
    SECTIONS,
    Config,
    ConfigError,
    config_to_toml,
    docs_markdown,
    load_config,
    loads_config,
    render_template,
    template_fields,
    tomllib,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


def errors_of(text: str, overrides=(), source="c.toml") -> str:
    with pytest.raises(ConfigError) as info:
        loads_config(text, source=source, overrides=overrides)
    return str(info.value)


@pytest.fixture
def gsm8k_paths():
    """The real GSM8K splits, shipped inside the package (python/rlkd/datasets/)."""
    return ['data.train_path="builtin:gsm8k/train"', 'data.eval_path="builtin:gsm8k/test"']


# ---- the shipped configs ---------------------------------------------------------------------


def test_math_toml_is_the_default_and_loads():
    cfg = load_config(CONFIGS / "math.toml")
    assert cfg == loads_config("")
    assert dataclasses.replace(cfg, model=Config().model, judge=Config().judge, reranker=Config().reranker) == Config()
    assert cfg.model.device == cfg.judge.device == "cpu"  # inherited from run.device


def test_rlvr_solved_toml_loads():
    cfg = load_config(CONFIGS / "rlvr-solved.toml")
    assert (cfg.data.labeled_filter, cfg.data.labeled_fraction, cfg.sft.enabled) == ("solved", 1.0, False)
    assert (cfg.rewards.vr_weight, cfg.rewards.judge_weight) == (1.0, 0.0)


def test_tiny_toml_loads():
    cfg = load_config(CONFIGS / "tiny.toml")
    assert cfg.model.name_or_path == cfg.judge.name_or_path == "embedded:smollm2-135m-instruct"
    assert (cfg.train.steps, cfg.rollout.group_size) == (2, 2)


PAPER = {"rlvr": (1.0, 0.0, 0.0), "judge_only": (0.0, 1.0, 0.0), "vr_judge": (0.5, 0.5, 0.0),
         "vr_judge_rerank": (0.5, 0.25, 0.25)}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_configs_validate_with_data_paths(name, gsm8k_paths):
    path = CONFIGS / "paper" / f"{name}.toml"
    with pytest.raises(ConfigError, match=r"data\.train_path: missing file"):
        load_config(path)  # the user-provided data path does not exist here
    cfg = load_config(path, gsm8k_paths)
    w = cfg.rewards
    assert (w.vr_weight, w.judge_weight, w.rerank_weight) == PAPER[name]
    assert (cfg.rollout.backend, cfg.algorithm.name, cfg.judge.name_or_path) == ("vllm", "ppo", "Qwen/Qwen3-8B")
    assert bool(cfg.reranker.name_or_path) == (w.rerank_weight > 0)
    assert loads_config(config_to_toml(cfg)) == cfg


def test_every_key_is_commented_in_math_toml():
    text = (CONFIGS / "math.toml").read_text()
    section, seen = None, set()
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if m := re.match(r"^\[(\w+)\]$", line):
            section = m.group(1)
            continue
        if m := re.match(r"^#?\s?(\w+) = ", line):
            if section and m.group(1) in {f.name for f in dataclasses.fields(SECTIONS[section])}:
                assert lines[i - 1].startswith("#"), f"math.toml: {section}.{m.group(1)} has no comment line above"
                seen.add((section, m.group(1)))
    every = {(s, f.name) for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
    assert every - seen == set()


def test_docs_are_generated_from_the_schema():
    docs = (ROOT / "docs" / "config.md").read_text()
    assert docs_markdown() in docs, "docs/config.md is stale: regenerate with `python -m rlkd.config --markdown`"
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert f"`{f.name}`" in docs and f.metadata["doc"]


# ---- round trip and overrides --------------------------------------------------------------


def test_round_trip_all_shipped_configs(tmp_path):
    for path in [CONFIGS / "math.toml", CONFIGS / "tiny.toml", CONFIGS / "rlvr-solved.toml"]:
        cfg = load_config(path)
        out = tmp_path / "resolved.toml"
        out.write_text(config_to_toml(cfg))
        assert load_config(out) == cfg
        assert config_to_toml(load_config(out)) == config_to_toml(cfg)


@settings(max_examples=40, deadline=None)
@given(prompt=st.text(st.characters(exclude_categories=("Cs",)), max_size=40),
       lr=st.floats(min_value=1e-12, max_value=1.0), threads=st.none() | st.integers(1, 64),
       words=st.lists(st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=6).filter(str.strip),
                      min_size=1, max_size=3))
def test_round_trip_property(prompt, lr, threads, words):
    base = loads_config("")
    cfg = dataclasses.replace(
        base,
        run=dataclasses.replace(base.run, torch_threads=threads),
        model=dataclasses.replace(base.model, system_prompt=prompt),
        optim=dataclasses.replace(base.optim, lr=lr),
        judge=dataclasses.replace(base.judge, yes_words=tuple(words), no_words=("\u0000nope",)),
    )
    assert loads_config(config_to_toml(cfg)) == cfg


def test_overrides_parse_toml_values_with_bare_string_fallback():
    cfg = loads_config("", overrides=[
        "rollout.temperature=0.7", "rollout.group_size = 8", "run.name=my run", "log.wandb=true",
        'model.lora_target_modules=["q_proj"]', "optim.betas=[0.9, 0.95]", "run.torch_threads=2",
        "model.system_prompt=", 'judge.yes_words=["Yes", "yes"]',
    ])
    assert cfg.rollout.temperature == 0.7 and cfg.rollout.group_size == 8
    assert cfg.run.name == "my run" and cfg.log.wandb is True
    assert cfg.model.lora_target_modules == ("q_proj",) and cfg.optim.betas == (0.9, 0.95)
    assert cfg.run.torch_threads == 2 and cfg.model.system_prompt == ""
    assert cfg.judge.yes_words == ("Yes", "yes")


def test_override_errors_name_the_override():
    msg = errors_of("", ["rollout.temprature=0.5"])
    assert "--set rollout.temprature=0.5: rollout.temprature: unknown key (did you mean 'temperature'?)" in msg
    assert "unknown section 'rolout'" in errors_of("", ["rolout.temperature=1"])
    assert "expected SECTION.KEY=VALUE" in errors_of("", ["rollout"])
    assert "exactly one dot" in errors_of("", ["rollout.a.b=1"])
    assert "--set rollout.temperature=hot: rollout.temperature: expected a float, got 'hot'" in errors_of(
        "", ["rollout.temperature=hot"])


def test_config_is_frozen():
    cfg = loads_config("")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.rollout.temperature = 2.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.run = cfg.run  # type: ignore[misc]


def test_per_model_device_inherits_run_device_only_when_empty():
    cfg = loads_config('[run]\ndevice = "cuda:1"\n[judge]\ndevice = "cpu"\n[rollout]\nbackend = "hf"\n')
    assert (cfg.model.device, cfg.judge.device, cfg.reranker.device) == ("cuda:1", "cpu", "cuda:1")


# ---- errors --------------------------------------------------------------------------------

ERROR_CASES = [
    # (toml, expected fragments)
    ('[rollout]\ntemperature = "hot"\n', ["c.toml:2: rollout.temperature: expected a float, got 'hot'"]),
    ("[rollout]\ngroup_size = 2.0\n", ["c.toml:2: rollout.group_size: expected an integer, got 2.0"]),
    ("[data]\nlabeled_count = true\n", ["c.toml:2: data.labeled_count: expected an integer, got true (a boolean)"]),
    ('[log]\nwandb = "yes"\n', ["log.wandb: expected a boolean (true/false), got 'yes'"]),
    ("[model]\nlora_target_modules = [1, 2]\n", ["model.lora_target_modules: expected a list of strings"]),
    ("[optim]\nbetas = [0.9]\n", ["optim.betas: expected a list of 2 floats"]),
    ("[optim]\nbetas = [0.9, 1.5]\n", ["optim.betas: each beta must be in [0, 1)"]),
    ("[rollout]\ntemprature = 0.5\n", ["c.toml:2: rollout.temprature: unknown key (did you mean 'temperature'?)"]),
    ("[rolout]\ntemperature = 0.5\n", ["c.toml:1: [rolout]: unknown section (did you mean 'rollout'?)"]),
    ("rollout = 3\n", ["rollout: expected a table"]),
    ("[rollout]\ntemperature = 0\n", ["rollout.temperature: must be > 0, got 0.0"]),
    ("[rollout]\ntop_p = 1.5\n", ["rollout.top_p: must be ≤ 1, got 1.5"]),
    ("[optim]\nlr = inf\n", ["optim.lr: must be a finite number"]),
    ("[run]\nseed = -1\n", ["run.seed: must be ≥ 0, got -1"]),
    ("[data]\nlabeled_fraction = 1.2\n", ["data.labeled_fraction: must be ≤ 1"]),
    ('[algorithm]\nname = "ppo2"\n', ["algorithm.name: unknown value 'ppo2'; valid: 'grpo', 'dr_grpo', 'rloo', 'ppo'",
                                       "did you mean 'ppo'"]),
    ('[model]\ndtype = "bf16"\n', ["model.dtype: unknown value 'bf16'; valid: 'auto', 'float32', 'bfloat16', 'float16'"]),
    ('[run]\ndevice = "gpu"\n', ["run.device: unknown device 'gpu'"]),
    ("[rewards]\nvr_weight = 0.6\njudge_weight = 0.5\n",
     ["c.toml:2: rewards.vr_weight: reward weights must sum to 1", "0.6 + 0.5 + 0 = 1.1"]),
    ("[rewards]\nvr_weight = 0.5\njudge_weight = 0.49999\n", ["must sum to 1"]),
    ("[rewards]\nwrong = 1.0\n", ["rewards.wrong: must be below rewards.correct"]),
    ('[data]\ntrain_path = "no/such/file.jsonl"\n', ["c.toml:2: data.train_path: missing file: 'no/such/file.jsonl'"]),
    ('[data]\neval_path = "./missing.parquet"\n', ["data.eval_path: missing file"]),
    ('[data]\ntrain_path = "hf:not a hub id"\n', ["data.train_path: bad hub dataset id"]),
    ('[model]\nname_or_path = "./no/such/model"\n', ["model.name_or_path: missing model directory"]),
    ('[judge]\nname_or_path = "embedded:qwen"\n', ["judge.name_or_path: unknown embedded model 'embedded:qwen'"]),
    ('[model]\nname_or_path = "not a model!"\n', ["model.name_or_path: 'not a model!' is neither"]),
    ('[model]\nuser_template = "Solve this."\n', ["model.user_template: the template must contain {question}"]),
    ('[model]\nuser_template = "{question} {answer}"\n', ["model.user_template: unknown placeholder {answer}"]),
    ('[judge]\ntemplate = "Q: {question} R: {reference}"\n', ["c.toml:2: judge.template: the template must contain {response}"]),
    ('[judge]\ntemplate = "R: {response} ref {reference}"\n', ["judge.template: the template must contain {question}"]),
    ('[judge]\ntemplate = "{question} {response}"\n', ["judge.template: the template must contain {reference}"]),
    ('[judge]\ntemplate = "{question} {respons} {reference}"\n',
     ["judge.template: unknown placeholder {respons}", "did you mean 'response'"]),
    ('[judge]\ntemplate = "{question} {response} {reference} {question}"\n', ["{question} appears 2 times"]),
    ('[judge]\ntemplate = "{question} {response} {reference} \\\\boxed{}"\n', ["judge.template: bad template: bad placeholder {}"]),
    ('[judge]\ntemplate = "{question} {response} {reference} }"\n', ["judge.template: bad template: Single '}'"]),
    ('[judge]\ntemplate = "{question!r} {response} {reference}"\n', ["format spec or conversion"]),
    ('[judge]\nmode = "reference_free"\ntemplate = "{question} {response} {reference}"\n',
     ["judge.template: unknown placeholder {reference}", "only filled in judge.mode = 'reference_guided'"]),
    ('[judge]\nmode = "reference_free"\n', ["judge.template", "is not set, so its default applies"]),
    ('[judge]\nmode = "guided"\n', ["judge.mode: unknown value 'guided'; valid: 'reference_free', 'reference_guided'"]),
    ('[judge]\nyes_words = []\n', ["judge.yes_words: must not be empty"]),
    ('[judge]\nyes_words = ["Yes"]\nno_words = ["Yes"]\n', ["judge.no_words: words in both"]),
    ("[judge]\nmax_len = 8192\n", ["judge.max_tokens_per_batch: must be ≥ judge.max_len (8192)"]),
    ("[rewards]\nvr_weight = 0.5\njudge_weight = 0.25\nrerank_weight = 0.25\n",
     ["reranker.name_or_path: rewards.rerank_weight = 0.25 needs a reranker model"]),
    ('[reranker]\nname_or_path = "org/verifier"\n', ["reranker.name_or_path: is set ('org/verifier') but rewards.rerank_weight = 0"]),
    ("[rollout]\ngroup_size = 1\n", ["rollout.group_size: must be ≥ 2 for algorithm.name = 'grpo'", "advantage 0"]),
    ('[algorithm]\nname = "rloo"\n[rollout]\ngroup_size = 1\n', ["must be ≥ 2 for algorithm.name = 'rloo'"]),
    ('[algorithm]\nname = "ppo"\nkl_coef = 0.05\nkl_estimator = "k3"\n', ["algorithm.kl_estimator: must be 'k1'"]),
    ("[data]\nlabeled_count = 0\n", ["data.labeled_fraction: is 0.5 but data.labeled_count = 0",
                                     "rewards.vr_weight: is 0.5 but no batch has labeled prompts"]),
    ("[data]\nlabeled_fraction = 0.2\n", ["0.2 x rollout.prompts_per_step (2) rounds to 0 labeled prompts"]),
    ("[data]\nlabeled_fraction = 0.8\n", ["rounds to all 2 prompts labeled"]),
    ("[data]\nlabeled_fraction = 0.0\n", ["rewards.vr_weight: is 0.5 but no batch has labeled prompts"]),
    ("[rewards]\nvr_weight = 1.0\njudge_weight = 0.0\n", ["unlabeled prompts would get no reward"]),
    ("[data]\ntrain_path = ''\nlabeled_count = 600\n", ["data.labeled_count: 600 exceeds data.synthetic_train_count (512)"]),
    ("[data]\ntrain_path = ''\nlabeled_count = 512\n", ["leaving no unlabeled prompts"]),
    ("[data]\ntrain_path = ''\nsynthetic_min_steps = 5\nsynthetic_max_steps = 3\n", ["data.synthetic_min_steps: 5 exceeds"]),
    ("[data]\nsynthetic_max_steps = 6\n", ["data.synthetic_max_steps: must be ≤ 5"]),
    ("[data]\neval_path = ''\neval_count = 0\n", ["data.eval_count: is 0 with synthetic eval problems"]),
    ('[rollout]\nbackend = "vllm"\n[run]\ndevice = "mps"\n', ["rollout.backend: 'vllm' runs on CUDA or on the CPU"]),
    ('[judge]\nbackend = "vllm"\nurl = "http://judge-host:8000"\n',
     ["judge.backend: 'vllm' loads the judge in this process, but judge.url = 'http://judge-host:8000'"]),
    ('[judge]\nbackend = "vllm"\ndevice = "cuda:1"\n', ["judge.backend: 'vllm' runs the judge on 'cpu' or 'cuda'"]),
    ('[judge]\nbackend = "vLLM"\n', ["judge.backend: unknown value 'vLLM'; valid: 'hf', 'vllm'"]),
    ('[run]\ndevice = "cuda"\n[judge]\nbackend = "vllm"\nvllm_gpu_memory_utilization = 0.6\n[rollout]\nbackend = "vllm"\n',
     ["judge.vllm_gpu_memory_utilization: the judge's and the rollout's vLLM engines share the GPU: 0.6 + "
      "rollout.vllm_gpu_memory_utilization 0.4 = 1 > 0.95"]),
    ('[log]\nwandb = true\nwandb_project = ""\n', ["log.wandb_project: must not be empty"]),
]


@pytest.mark.parametrize("text,fragments", ERROR_CASES, ids=[f"e{i}" for i in range(len(ERROR_CASES))])
def test_errors_name_the_key(text, fragments):
    msg = errors_of(text)
    for fragment in fragments:
        assert fragment in msg, msg


def test_all_errors_reported_together_and_error_type():
    with pytest.raises(ConfigError) as info:
        loads_config('[rollout]\ntemperature = "hot"\ntop_p = 2.0\n[algorithm]\nname = "x"\n', source="c.toml")
    err = info.value
    assert isinstance(err, RlkdError) and isinstance(err, ValueError)
    assert len(err.errors) == 3
    assert [e.split(": ")[0] for e in err.errors] == ["c.toml:2", "c.toml:3", "c.toml:5"]


def test_int_is_accepted_for_float_and_nothing_is_rewritten():
    cfg = loads_config("[rollout]\ntemperature = 1\ntop_p = 0.95\n[rewards]\nvr_weight = 1\njudge_weight = 0\n"
                       "[data]\nlabeled_fraction = 1\nlabeled_count = 512\n")
    assert cfg.rollout.temperature == 1.0 and isinstance(cfg.rollout.temperature, float)
    assert cfg.rollout.top_p == 0.95 and cfg.rewards.vr_weight == 1.0


def test_weights_within_tolerance_are_kept_as_written():
    cfg = loads_config("[rewards]\nvr_weight = 0.3333333\njudge_weight = 0.3333333\nrerank_weight = 0.3333334\n"
                       '[reranker]\nname_or_path = "org/verifier"\n')
    assert (cfg.rewards.vr_weight, cfg.rewards.judge_weight, cfg.rewards.rerank_weight) == (0.3333333, 0.3333333, 0.3333334)


def test_file_level_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[run]\nname = \n")
    with pytest.raises(ConfigError, match=r"bad\.toml: invalid TOML: .*line 2"):
        load_config(bad)
    ok = tmp_path / "ok.toml"
    ok.write_text('[run]\nname = "x"\n[rollout]\ntemperature = "hot"\n')
    with pytest.raises(ConfigError, match=r"ok\.toml:4: rollout\.temperature"):
        load_config(ok)


def test_existing_data_paths_and_hub_ids_pass(tmp_path):
    f = tmp_path / "train.jsonl"
    f.write_text('{"question": "q", "answer": "#### 1"}\n')
    cfg = loads_config(f'[data]\ntrain_path = "{f}"\neval_path = "hf:openai/gsm8k"\n'
                       '[judge]\nname_or_path = "Qwen/Qwen3-8B"\n')
    assert cfg.data.train_path == str(f) and cfg.data.eval_path == "hf:openai/gsm8k"
    assert loads_config(f'[model]\nname_or_path = "{tmp_path}"\n').model.name_or_path == str(tmp_path)


# ---- templates -----------------------------------------------------------------------------


def test_template_helpers():
    t = "Q: {question}\nPut the answer in \\boxed{{}}. R: {response}"
    assert template_fields(t) == ["question", "response"]
    assert render_template(t, question="1+{response}", response="2") == "Q: 1+{response}\nPut the answer in \\boxed{}. R: 2"
    with pytest.raises(ValueError, match="doubled"):
        template_fields("\\boxed{")


def test_default_templates_are_valid_and_documented():
    cfg = loads_config("")
    assert template_fields(cfg.model.user_template) == ["question"]
    assert sorted(template_fields(cfg.judge.template)) == ["question", "reference", "response"]
    toml = tomllib.loads(config_to_toml(cfg))
    assert toml["judge"]["template"] == cfg.judge.template


def test_embedded_names_match_the_weights_registry():
    weights = pytest.importorskip("rlkd.weights")
    from rlkd.config import EMBEDDED_MODELS

    assert set(EMBEDDED_MODELS) == set(weights.EMBEDDED)


def test_k1_is_refused_where_the_kl_is_a_loss_term_and_k2_is_accepted():
    for name in ("grpo", "dr_grpo", "rloo"):
        text = f'[algorithm]\nname = "{name}"\nkl_coef = 0.05\nkl_estimator = "k1"\n'
        assert "algorithm.kl_estimator: 'k1' with algorithm.name" in errors_of(text)
        assert loads_config(text.replace('"k1"', '"k2"')).algorithm.kl_estimator == "k2"
    # k1 without a KL term, and k1 in PPO's in-reward KL, stay valid
    assert loads_config('[algorithm]\nkl_estimator = "k1"\n').algorithm.kl_estimator == "k1"
    assert loads_config('[algorithm]\nname = "ppo"\nkl_coef = 0.05\nkl_estimator = "k1"\n').algorithm.name == "ppo"


def test_teacher_template_kwargs_table_round_trips_and_is_checked():
    default = loads_config("")
    assert dict(default.judge.teacher_template_kwargs) == {"enable_thinking": False}
    assert "teacher_template_kwargs = {enable_thinking = false}" in config_to_toml(default)
    cfg = loads_config('[judge]\nteacher_template_kwargs = {enable_thinking = true, reasoning_effort = "low"}\n')
    assert dict(cfg.judge.teacher_template_kwargs) == {"enable_thinking": True, "reasoning_effort": "low"}
    assert loads_config(config_to_toml(cfg)) == cfg
    assert cfg.to_dict()["judge"]["teacher_template_kwargs"] == {"enable_thinking": True, "reasoning_effort": "low"}
    over = loads_config("", overrides=["judge.teacher_template_kwargs={}"])
    assert over.judge.teacher_template_kwargs == ()
    assert "judge.teacher_template_kwargs: expected a table" in errors_of("[judge]\nteacher_template_kwargs = [1]\n")
    assert "expected a table" in errors_of("[judge]\nteacher_template_kwargs = {a = [1]}\n")
