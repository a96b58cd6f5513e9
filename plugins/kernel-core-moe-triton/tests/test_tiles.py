"""The tile table: small row blocks while experts get few rows, an error for unknown devices."""

from __future__ import annotations

import pytest

from kernel_core_moe_triton.tiles import FEW_ROWS, TILES, tiles_for


@pytest.mark.parametrize("device_type", sorted(TILES))
def test_row_block_grows_once_experts_get_many_rows(device_type: str) -> None:
    few, many = TILES[device_type]
    assert tiles_for(device_type, FEW_ROWS * 8, 8) == few
    assert tiles_for(device_type, FEW_ROWS * 8 + 1, 8) == many
    for tiles in (few, many):  # tl.dot needs 16 in every dimension
        assert min(tiles.block_m, tiles.block_n, tiles.block_k) >= 16


def test_unknown_device_type_is_named() -> None:
    with pytest.raises(ValueError, match="'mps'"):
        tiles_for("mps", 4, 8)
