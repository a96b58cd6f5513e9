"""The conformance suite of a prompt-learning tuner (plugin API 1.4, ``kernel_core.contracts.prompt``).

:class:`~kernel_core_sdk.conformance.TunerConformance` checks the layers a method wraps; a
prompt-learning method wraps none, so this suite checks it on a whole model instead: the
registration checks, the config (a ``PromptLearningConfig`` that round-trips, refuses unknown
fields and is saved without ``target_modules``), the encoder (only it trains; its table has the
kind's shape), forward (the prompt changes the output, disabled adapters give the base output),
a second adapter (switching the output and what trains, deleted with its encoder), a training
step, training through transformers' ``Trainer``, a file round trip (PEFT's single
``prompt_embeddings`` tensor, loaded for inference with the same logits), greedy ``generate``
with and without the cache equal to a greedy loop of plain forwards, and the refusals (merging,
one adapter per row).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import PreTrainedModel

from kernel_core.contracts.prompt import PastKeyValuesTuner, PromptLearningConfig, VirtualTokensTuner
from kernel_core.contracts.records import PluginKind
from kernel_core.contracts.tuner import Tuner
from kernel_core.peft import PeftModel, get_peft_model
from kernel_core_sdk.conformance._plugin import PluginUnderTest
from kernel_core_sdk.peft_oracle import greedy, greedy_by_forward, randomise
from kernel_core_sdk.tiny_models import tiny_llama, token_ids


class PromptLearningConformance(PluginUnderTest):
    """Subclass as ``TestMyMethod(PromptLearningConformance)``; the method must be installed (or
    the test module registers it). Fixtures you supply: ``plugin_module`` (the entry-point
    module), ``tuner_config`` (a valid config; each test adds it to a fresh model), and
    ``plugin_name`` when the module registers several tuners. ``build`` (default
    :func:`~kernel_core_sdk.tiny_models.tiny_llama`) makes the base model."""

    kind = PluginKind.TUNER
    contract = Tuner

    @pytest.fixture
    def build(self) -> Callable[[], PreTrainedModel]:
        return tiny_llama

    @pytest.fixture
    def adapted(self, build: Callable[[], PreTrainedModel], tuner_config: PromptLearningConfig) -> PeftModel:
        """A model with the adapter, moved off its init so that it changes the output."""
        model = get_peft_model(build(), tuner_config)
        randomise(model)
        return model.eval()

    def test_tuner_is_a_prompt_learning_kind(self, implementation: type, tuner_config: PromptLearningConfig) -> None:
        assert issubclass(implementation, (VirtualTokensTuner, PastKeyValuesTuner))
        assert isinstance(tuner_config, PromptLearningConfig) and type(tuner_config) is implementation.config_class

    def test_config_round_trips_without_target_modules(self, tuner_config: PromptLearningConfig) -> None:
        data = tuner_config.to_dict()
        assert "target_modules" not in data
        assert type(tuner_config).from_dict(data) == tuner_config
        with pytest.raises(ValueError, match="not_a_field"):
            type(tuner_config)(**data, not_a_field=1)

    def test_only_the_encoder_trains_and_its_table_has_the_kinds_shape(
        self, implementation: type, build: Callable[[], PreTrainedModel], tuner_config: PromptLearningConfig
    ) -> None:
        model = get_peft_model(build(), tuner_config)
        config = model.peft_config["default"]
        trained = [name for name, p in model.named_parameters() if p.requires_grad]
        assert trained and all(name.startswith("base_model.prompt_encoder.default.") for name in trained)
        assert config.token_dim and config.num_layers and config.num_attention_heads, "completed from the model"
        width = config.token_dim * (2 * config.num_layers if issubclass(implementation, PastKeyValuesTuner) else 1)
        assert model.base_model.prompt_encoder["default"].table().shape == (config.num_virtual_tokens, width)

    def test_prompt_changes_the_output_and_disabling_gives_the_base(self, adapted: PeftModel, build: Callable[[], PreTrainedModel]) -> None:
        ids = token_ids()
        with torch.no_grad():
            base = build()(ids).logits
            out = adapted(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, -ids.shape[1]:]
            with adapted.disable_adapter():
                disabled = adapted(input_ids=ids).logits
        assert (out - base).abs().max() > 1e-3
        assert torch.equal(disabled, base)

    def test_a_training_step_changes_the_output(self, adapted: PeftModel) -> None:
        ids = token_ids()
        with torch.no_grad():
            before = adapted(input_ids=ids).logits
        adapted.train()
        trained = [p for p in adapted.parameters() if p.requires_grad]
        adapted(input_ids=ids, labels=ids).loss.backward()
        torch.optim.SGD(trained, lr=1.0).step()
        adapted.eval()
        with torch.no_grad():
            assert (adapted(input_ids=ids).logits - before).abs().max() > 1e-4

    def test_trains_through_hf_trainer(self, adapted: PeftModel, build: Callable[[], PreTrainedModel], tmp_path: Path) -> None:
        """transformers' ``Trainer`` on the ``PeftModel`` as it is: the loss falls, only the encoder changes."""
        from transformers import Trainer, TrainingArguments

        rows = [{"input_ids": row, "attention_mask": torch.ones_like(row), "labels": row} for row in token_ids(batch=1).repeat(8, 1)]
        before = {name: p.detach().clone() for name, p in adapted.named_parameters()}
        with torch.no_grad():
            first = adapted(**{key: torch.stack([row[key] for row in rows[:2]]) for key in rows[0]}).loss.item()
        arguments = TrainingArguments(
            output_dir=str(tmp_path / "run"), per_device_train_batch_size=2, max_steps=8, learning_rate=0.05,
            save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True,
        )
        Trainer(model=adapted.train(), args=arguments, train_dataset=rows).train()
        adapted.eval()
        with torch.no_grad():
            last = adapted(**{key: torch.stack([row[key] for row in rows[:2]]) for key in rows[0]}).loss.item()
        assert last < first
        changed = sorted(name for name, p in adapted.named_parameters() if not torch.equal(p, before[name]))
        assert changed and all(name.startswith("base_model.prompt_encoder.default.") for name in changed)

    def test_file_round_trip(self, adapted: PeftModel, build: Callable[[], PreTrainedModel], tmp_path: Path) -> None:
        adapted.save_pretrained(tmp_path)
        assert list(load_file(str(tmp_path / "adapter_model.safetensors"))) == ["prompt_embeddings"]
        assert "target_modules" not in json.loads((tmp_path / "adapter_config.json").read_text())
        loaded = PeftModel.from_pretrained(build(), tmp_path)
        ids = token_ids()
        with torch.no_grad():
            assert torch.equal(loaded(input_ids=ids).logits, adapted(input_ids=ids).logits)
        assert not any(p.requires_grad for p in loaded.parameters())

    def test_greedy_generate_with_the_cache_equals_a_loop_of_forwards(self, adapted: PeftModel) -> None:
        expected = greedy_by_forward(adapted)
        assert torch.equal(greedy(adapted), expected)
        assert torch.equal(greedy(adapted, use_cache=False), expected)

    def test_a_second_adapter_switches_the_output_and_what_trains(
        self, adapted: PeftModel, tuner_config: PromptLearningConfig
    ) -> None:
        adapted.add_adapter("other", tuner_config)
        randomise(adapted, seed=5)  # the active adapter's parameters only
        ids = token_ids()
        with torch.no_grad():
            first = adapted(input_ids=ids).logits
            adapted.set_adapter("other")
            other = adapted(input_ids=ids).logits
        assert (first - other).abs().max() > 1e-3
        trained = {name.split(".")[2] for name, p in adapted.named_parameters() if p.requires_grad}
        assert trained == {"other"}
        adapted.delete_adapter("other")
        assert list(adapted.base_model.prompt_encoder) == ["default"]
        with torch.no_grad():
            assert torch.equal(adapted(input_ids=ids).logits, first)

    def test_merging_and_mixed_batches_are_refused(self, adapted: PeftModel) -> None:
        with pytest.raises(ValueError, match="nothing to merge"):
            adapted.merge_adapter()
        with pytest.raises(ValueError, match="one adapter per forward"):
            adapted(input_ids=token_ids(), adapter_names=["default"] * 3)
