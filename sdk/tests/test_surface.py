"""private_imports names each import of a kernel_core name the SDK does not re-export, and
only those."""

from __future__ import annotations

from pathlib import Path

from kernel_core_sdk.surface import private_imports


def test_private_names_are_reported_by_file_and_public_ones_pass(tmp_path: Path) -> None:
    (tmp_path / "tuner.py").write_text(
        "from kernel_core.contracts.tuner import Tuner, TunerLayer\n"
        "from kernel_core.peft.defaults import COMMON_TARGET_MODULES\n"
        "from kernel_core.peft.model import PeftModel\n"
        "from kernel_core import hookimpl\n"
    )
    (tmp_path / "layer.py").write_text("import kernel_core.peft.state_dict\nimport torch\n")
    assert private_imports(tmp_path) == [
        "layer.py: import kernel_core.peft.state_dict",
        "tuner.py: from kernel_core.peft.model import PeftModel",
    ]
