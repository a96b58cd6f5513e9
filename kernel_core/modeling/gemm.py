"""The GEMM every model layer calls, run by the linear policy of the platform the engine built on.

Which library computes a projection, and in which weight layout, is hardware policy: it lives in
platform plugins (:meth:`kernel_core.contracts.platform.Platform.linear_policy`, plugin API 1.5),
not here. The engine installs its platform's policy when it builds (:func:`install_linear_policy`)
and hands the loaded model's weights to the policy's ``prepare`` (``ModelArchitecture.prepare_weights``);
until then, and on platforms naming none, the core's default runs plain ``F.linear``. The policy is
one per process, as the platform is.

Part of the public model-building surface (:mod:`kernel_core.modeling`): a model plugin computing
its own projections calls :func:`linear` rather than ``F.linear`` to get the platform's GEMM (plugin
API 1.3).
"""

from __future__ import annotations

import torch

from kernel_core.contracts.platform import LinearPolicy

_installed = LinearPolicy()


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` for ``x`` ``[rows, in]``: a contiguous ``[rows, out]`` tensor."""
    return _installed.linear(x, weight, bias)


def linear_policy() -> LinearPolicy:
    """The policy :func:`linear` runs now."""
    return _installed


def install_linear_policy(policy: LinearPolicy) -> LinearPolicy:
    """Make ``policy`` the one :func:`linear` runs; returns the previous one. Weights a policy
    prepared run only under it: the engine installs it before preparing a model's weights."""
    global _installed
    previous, _installed = _installed, policy
    return previous
