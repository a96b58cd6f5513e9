"""The engine installs the GEMM policy of the platform it builds on and hands it the model's weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kernel_core.config import EngineConfig
from kernel_core.engine.llm_engine import LLMEngine
from kernel_core.modeling.gemm import linear_policy

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_cpu_platform_installs_its_policy_and_packs_the_projections(tiny_model: Path) -> None:
    engine = LLMEngine(EngineConfig(model=str(tiny_model), platform="cpu", num_kv_blocks=8))
    components = engine.components
    policy = linear_policy()
    assert type(policy) is type(components.platform.linear_policy())
    assert policy.name != "F.linear"
    model = components.model
    packs = torch.float32 in policy.dtypes  # type: ignore[attr-defined]
    for layer in model.layers:  # type: ignore[attr-defined]
        for projection in (layer.attention.qkv_proj, layer.attention.o_proj, layer.mlp.gate_up_proj, layer.mlp.down_proj):
            assert projection.weight.is_mkldnn is packs
    assert model.lm_head is model.embed_tokens  # tied: the embedding table, left as loaded
