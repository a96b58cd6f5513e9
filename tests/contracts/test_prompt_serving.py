"""The ready prompt-learning servings on their own: which rows of a step they replace, and a
model plugin that offers no place for them (its adapters refused at load, the engine unharmed)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from kernel_core.contracts.prompt_serving import PastKeyValuesServing, ServedPrompt, VirtualTokensServing
from kernel_core.contracts.serving import NO_SLOT, ServingContext, SlotBatch
from kernel_core.errors import AdapterLoadError

HIDDEN = 4


def context(max_virtual_tokens: int = 3) -> ServingContext:
    return ServingContext(max_slots=2, max_rank=1, dtype=torch.float32, device=torch.device("cpu"),
                          settings={"max_virtual_tokens": max_virtual_tokens}, select_kernel=lambda kind, name: None)


class Model:
    """What the servings read of a model: sizes and the hook lists."""

    def __init__(self, embedding_hooks: list | None, layers: int, kv_hooks: bool = True) -> None:
        self.hidden_size, self.num_layers, self.num_kv_heads, self.head_size = HIDDEN, layers, 1, 2
        self._embedding, self._kv = embedding_hooks, [[] for _ in range(layers if kv_hooks else 0)]

    def embedding_hooks(self) -> list | None:
        return self._embedding

    def kv_hooks(self) -> list[list]:
        return self._kv


def config(count: int) -> SimpleNamespace:
    return SimpleNamespace(num_virtual_tokens=count, num_transformer_submodules=1)


def test_only_the_virtual_positions_of_its_slots_are_replaced() -> None:
    model = Model([], 0)
    serving = VirtualTokensServing(model, context())
    table = torch.arange(2 * HIDDEN, dtype=torch.float32).view(2, HIDDEN) + 100
    adapter = serving.convert("a", config(2), {"prompt_embeddings": table}, "adapter 'a'")
    assert isinstance(adapter, ServedPrompt) and adapter.num_virtual_tokens == 2
    serving.write(1, adapter)
    # rows: slot 1 at positions 0, 1, 2 (its prompt's first token), then a base row at position 0
    slots, positions = [1, 1, 1, NO_SLOT], torch.tensor([0, 1, 2, 0])
    serving.begin_step(SlotBatch.from_token_slots(slots, torch.device("cpu"), positions))
    hidden = torch.zeros(4, HIDDEN)
    model.embedding_hooks()[0](hidden)
    assert torch.equal(hidden[:2], table) and not hidden[2:].any()
    serving.end_step()
    hidden.zero_()
    model.embedding_hooks()[0](hidden)
    assert not hidden.any()


def test_a_model_without_the_places_refuses_the_kinds_at_load_only() -> None:
    for serving_class, model in ((VirtualTokensServing, Model(None, 0)), (PastKeyValuesServing, Model([], 2, kv_hooks=False))):
        assert serving_class.slot_nbytes(model, context()) == 0
        serving = serving_class(model, context())  # the engine still builds
        with pytest.raises(AdapterLoadError, match=r"adapter 'a': cannot be served: the Model model plugin offers no"):
            serving.convert("a", config(1), {"prompt_embeddings": torch.zeros(1, HIDDEN)}, "adapter 'a'")


def test_the_file_is_checked_at_load() -> None:
    serving = PastKeyValuesServing(Model([], 2), context())  # rows: 2 layers * 2 * 1 head * 2 = 8 wide
    where = "adapter 'a'"
    with pytest.raises(AdapterLoadError, match=r"4 virtual tokens exceed max_virtual_tokens 3"):
        serving.convert("a", config(4), {"prompt_embeddings": torch.zeros(4, 8)}, where)
    with pytest.raises(AdapterLoadError, match=r"prompt_embeddings has shape \(2, 6\), but num_virtual_tokens=2 .* \(2, 8\)"):
        serving.convert("a", config(2), {"prompt_embeddings": torch.zeros(2, 6)}, where)
    with pytest.raises(AdapterLoadError, match=r"holds exactly 'prompt_embeddings'; this one holds \['other'\]"):
        serving.convert("a", config(2), {"other": torch.zeros(2, 8)}, where)
    served = serving.convert("a", config(2), {"prompt_embeddings": torch.arange(16.0).view(2, 8)}, where)
    assert served.rows.shape == (2, 2, 2, 1, 2)  # [V, layer, key/value, kv_heads, head_size]
    assert served.rows[1, 0, 1].flatten().tolist() == [10.0, 11.0]  # token 1, layer 0, values
