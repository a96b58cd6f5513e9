"""The SDK re-exports the whole public model-building surface, as docs/plugins.md says."""

from __future__ import annotations

import kernel_core.modeling
import kernel_core_sdk


def test_every_name_of_kernel_core_modeling_is_re_exported() -> None:
    missing = [name for name in kernel_core.modeling.__all__ if name not in kernel_core_sdk.__all__]
    assert missing == []
    for name in kernel_core.modeling.__all__:
        assert getattr(kernel_core_sdk, name) is getattr(kernel_core.modeling, name), name
