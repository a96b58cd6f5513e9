"""WeightLoader: projections fused in the order given, and every HF parameter's place recorded."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from kernel_core.modeling import SafetensorsCheckpoint, WeightLoader


def test_linear_fuses_modules_and_records_their_rows(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    tensors = {
        "attn.q_proj.weight": torch.randn(4, 3, generator=generator), "attn.q_proj.bias": torch.randn(4, generator=generator),
        "attn.k_proj.weight": torch.randn(2, 3, generator=generator), "attn.k_proj.bias": torch.randn(2, generator=generator),
        "norm.weight": torch.randn(3, generator=generator),
    }
    save_file(tensors, tmp_path / "model.safetensors")
    with SafetensorsCheckpoint(tmp_path) as checkpoint:
        loader = WeightLoader(checkpoint, torch.float32, torch.device("cpu"))
        fused = loader.linear({"attn.q_proj": 4, "attn.k_proj": 2}, 3, bias=True)
        norm = loader.tensor("norm.weight", (3,))
    assert fused.parts == {"attn.q_proj": slice(0, 4), "attn.k_proj": slice(4, 6)}
    x = torch.randn(5, 3, generator=generator)
    for module, rows in fused.parts.items():
        expected = x @ tensors[f"{module}.weight"].T + tensors[f"{module}.bias"]
        torch.testing.assert_close(fused(x)[:, rows], expected)
    for name, parameter in tensors.items():
        tensor, rows = loader.slices[name]
        assert torch.equal(tensor[rows], parameter), name
    assert loader.slices["norm.weight"][0] is norm and loader.slices["attn.k_proj.weight"][0] is fused.weight
