"""How a new Linear adapter starts (``init_lora_weights``).

``True``: A Kaiming-uniform, B zero, so the model starts unchanged. ``"gaussian"``: A normal with
std 1/r, B zero. ``"pissa"`` (``"pissa_niter_<n>"`` for the randomised SVD): A and B from the
top-r singular triplets of W, which loses them (PiSSA). ``"olora"``: A and B from a QR of W, which
loses them. ``False``: both random, so the adapter is not the identity (for tests).
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from kernel_core_lora.layers import Linear


def initialise_linear(layer: Linear, adapter_name: str, init: bool | str) -> None:
    """Initialise adapter ``adapter_name`` of ``layer`` in place (its factors, maybe its base)."""
    lora_a, lora_b = layer.factors(adapter_name)
    with torch.no_grad():
        if init is False:
            return
        if init is True:
            nn.init.kaiming_uniform_(lora_a, a=math.sqrt(5))
            nn.init.zeros_(lora_b)
        elif init == "gaussian":
            nn.init.normal_(lora_a, std=1 / layer.r[adapter_name])
            nn.init.zeros_(lora_b)
        elif init == "olora":
            _from_base(layer, adapter_name, *_olora(layer.weight_yx().float(), layer.r[adapter_name]))
        else:
            niter = re.fullmatch(r"pissa_niter_(\d+)", init)
            factors = _pissa(layer.weight_yx().float(), layer.r[adapter_name], layer.scaling[adapter_name], int(niter.group(1)) if niter else None)
            _from_base(layer, adapter_name, *factors)


def _pissa(weight: torch.Tensor, rank: int, scaling: float, niter: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A = sqrt(S_r / s) Vh_r and B = U_r sqrt(S_r / s), so s B A is W's best rank-r part."""
    if niter is None:
        u, s, vh = torch.linalg.svd(weight, full_matrices=False)
        u, s, vh = u[:, :rank], s[:rank], vh[:rank]
    else:
        u, s, v = torch.svd_lowrank(weight, q=rank, niter=niter)
        vh = v.T
    root = torch.diag(torch.sqrt(s / scaling))
    return root @ vh, u @ root


def _olora(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A = R_r and B = Q_r from W = Q R."""
    q, r = torch.linalg.qr(weight)
    return r[:rank], q[:, :rank]


def _from_base(layer: Linear, adapter_name: str, lora_a: torch.Tensor, lora_b: torch.Tensor) -> None:
    """Set the factors and take ``s B A`` out of the base weight, so the model starts unchanged."""
    a, b = layer.factors(adapter_name)
    a.copy_(lora_a)
    b.copy_(lora_b)
    weight = layer.weight_yx()
    weight.sub_((layer.scaling[adapter_name] * lora_b @ lora_a).to(weight.dtype))
