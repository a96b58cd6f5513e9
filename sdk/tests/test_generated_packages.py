"""Generated packages pass their own tests as generated, and those tests have teeth: each
template, broken in a typical way, fails the conformance test that guards against it."""

from __future__ import annotations

from pathlib import Path

from kernel_core.contracts.records import PluginKind
from kernel_core_sdk.scaffold import TEMPLATES, create_plugin

#: (kind, implementation file, text, replacement, the suite test that must fail).
MUTATIONS = [
    ("scheduler-policy", "policy.py", ", request.request_id)", ")", "test_sort_key_is_a_strict_total_order"),
    (
        "cache-manager", "cache.py", "self._tables.pop(request_id, [])", "self._tables.pop(request_id, [])[1:]",
        "test_free_returns_every_block_and_ignores_unknown_ids",
    ),
    ("attention-backend", "attention.py", ".tril(seq_len - new)", ".tril(seq_len)", "test_matches_dense_reference"),
    (
        "attention-backend", "attention.py", "keys[metadata.slot_mapping] = key",
        "keys[metadata.slot_mapping.flip(0)] = key", "test_writes_new_kv_to_their_slots",
    ),
    ("moe-kernel", "moe.py", "if renormalize:", "if False:", "test_matches_per_token_reference"),
    # NO_SLOT (-1) indexes the last slot: tokens without an adapter get the last one's update.
    (
        "lora-kernel", "lora.py", "rows = (batch.token_slots != NO_SLOT).nonzero().squeeze(1)",
        "rows = torch.arange(len(batch.token_slots), device=output.device)", "test_matches_per_token_reference",
    ),
    # The update lands in a new tensor, not in the output passed in.
    ("lora-kernel", "lora.py", "output.index_add_(0,", "output = output.index_add(0,", "test_matches_per_token_reference"),
    ("tuner", "tuner.py", "operation(bias, scale)", "pass", "test_merge_matches_and_unmerge_restores"),
    (
        "tuner", "tuner.py", "super().__init__(base_layer.requires_grad_(False))", "super().__init__(base_layer)",
        "test_only_adapter_parameters_train",
    ),
    (
        "tuner", "tuner.py", "result * self.scale(adapter_name)", "result * self.scale(self.active_adapters[0])",
        "test_mixed_batch_matches_each_row_alone",
    ),
    (
        "tuner", "tuner.py", "self.active_adapters if adapter_names is None else adapter_names", "self.active_adapters",
        "test_merge_given_adapters",
    ),
    ("tuner", "tuner.py", "del self.", "self.", "test_delete_adapter_removes_its_parameters"),
]


def test_generated_packages_pass_their_own_tests(tmp_path: Path, package_tests) -> None:
    packages = [create_plugin(kind, f"gen-{kind.value}", tmp_path) for kind in TEMPLATES]
    result = package_tests(packages)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout


def test_suites_catch_broken_templates(tmp_path: Path, package_tests) -> None:
    packages = []
    for number, (kind, file, text, replacement, _) in enumerate(MUTATIONS):
        package = create_plugin(PluginKind(kind), f"mutant-{number}", tmp_path)
        implementation = package / f"kernel_core_mutant_{number}" / file
        source = implementation.read_text()
        assert text in source, f"mutation {number} no longer applies to the {kind} template"
        implementation.write_text(source.replace(text, replacement))
        packages.append(package)
    guards = sorted({guard for *_, guard in MUTATIONS})
    failed = package_tests(packages, "-k", " or ".join(guards)).stdout
    for number, (kind, _, _, _, guard) in enumerate(MUTATIONS):
        assert f"test_mutant_{number}.py::TestMutant{number}" in failed and any(
            line.startswith("FAILED") and f"test_mutant_{number}.py" in line and f"::{guard}" in line
            for line in failed.splitlines()
        ), f"{kind} mutant {number} did not fail {guard}:\n{failed[-3000:]}"
