"""AttentionOptions refuses what SelfAttention cannot compute, naming the field. (The block's
arithmetic is checked against transformers by the model plugins' oracle tests: per-head q/k norm
by Qwen3 and Qwen3-MoE, projection-wide q/k norm and clip_qkv by OLMoE.)"""

from __future__ import annotations

import pytest

from kernel_core.errors import InvalidModelFolderError
from kernel_core.modeling import AttentionOptions


def test_qk_norm_spans_a_head_or_the_projection() -> None:
    assert AttentionOptions(qk_norm=True).qk_norm_scope == "head"
    assert AttentionOptions(qk_norm=True, qk_norm_scope="projection").qk_norm_scope == "projection"
    with pytest.raises(ValueError, match=r"qk_norm_scope 'layer' is not one of head, projection"):
        AttentionOptions(qk_norm=True, qk_norm_scope="layer")


@pytest.mark.parametrize("clip", [0, -1.0])
def test_a_clip_qkv_that_is_not_positive_is_named(clip: float) -> None:
    with pytest.raises(InvalidModelFolderError, match=f"clip_qkv {clip!r} in config.json is not a positive number"):
        AttentionOptions(clip_qkv=clip)
