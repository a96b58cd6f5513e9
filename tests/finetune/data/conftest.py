"""Every data test reads its files with a ``datasets`` cache of its own."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def own_datasets_cache(datasets_cache: Path) -> Path:
    """The test's own ``$KERNEL_CORE_CACHE`` (see ``datasets_cache``)."""
    return datasets_cache
