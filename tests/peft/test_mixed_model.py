"""``PeftMixedModel`` (issue 14 point 5) against peft's own mixed model, the oracle.

Adapters of LoRA and of LoHa, LoKr, OFT, AdaLoRA or SHiRA (whichever plugins are installed) sit
on different and on the same modules; switched, combined (several active at once), disabled and
merged they give peft's ``PeftMixedModel`` logits. "Same" is judged against peft's noise floor on
the same adapters (its merged mixed model against its unmerged one). AdaLoRA's containers share
LoRA's ``lora_`` prefix: layers and tensors belong to an adapter by its name, not by prefix.
peft refuses every other method (IA3, LayerNorm tuning, VeRA, BOFT, ...) in a mixed model; so
does ours, by the method's capability rather than a list.
"""

from __future__ import annotations

import copy
import importlib.util
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import peft
import pytest
import torch
from safetensors.torch import load_file

from kernel_core.errors import InvalidAdapterConfigError
from kernel_core.peft import BASE_ADAPTER, PeftMixedModel, get_config, get_peft_model
from kernel_core.peft.config import config_to_dict
from kernel_core.peft.injection import layer_stack
from kernel_core_sdk.tiny_models import tiny_llama, token_ids

#: Adapters by name: (our method, peft config factory). Random (non-identity) inits.
ADAPTERS: dict[str, tuple[str, Callable[..., Any]]] = {
    "lora": ("lora", lambda targets: peft.LoraConfig(target_modules=targets, r=4, lora_alpha=8, init_lora_weights=False)),
    "loha": ("loha", lambda targets: peft.LoHaConfig(target_modules=targets, r=4, alpha=6, init_weights=False)),
    "lokr": ("lokr", lambda targets: peft.LoKrConfig(target_modules=targets, r=4, alpha=6, init_weights=False)),
    "oft": ("oft", lambda targets: peft.OFTConfig(target_modules=targets, r=0, oft_block_size=4, init_weights=False)),
    "shira": ("shira", lambda targets: peft.ShiraConfig(target_modules=targets, r=2, init_weights=False)),
    "adalora": (
        "adalora",
        lambda targets: peft.AdaLoraConfig(target_modules=targets, init_r=4, target_r=2, lora_alpha=8, total_step=10, init_lora_weights=False),
    ),
}
#: Fields our config of a method needs beyond its targets (AdaLoRA's schedule needs the run's length).
REQUIRED: dict[str, dict[str, Any]] = {"adalora": {"total_step": 10}, "shira": {"r": 2}}
#: Targets of LoRA and of the other method: overlapping (q_proj carries both) and apart.
LAYOUTS = {
    "same-modules": (["q_proj", "v_proj"], ["q_proj", "v_proj"]),
    "overlapping": (["q_proj", "v_proj"], ["q_proj", "o_proj"]),
    "different-modules": (["q_proj"], ["k_proj", "o_proj"]),
}


def _installed(method: str) -> bool:
    return method == "lora" or importlib.util.find_spec(f"kernel_core_{method}") is not None


OTHERS = [name for name in ("loha", "lokr", "oft", "adalora", "shira") if _installed(name)]


def _order(other: str) -> list[str]:
    """The order to add LoRA and ``other`` in: peft refuses a SHiRA layer over another layer
    ("SHiRA does not support nested base layers"), so SHiRA goes first (see the nested test)."""
    return [other, "lora"] if other == "shira" else ["lora", other]


def _randomise(model: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))


def _logits(model: torch.nn.Module, **kwargs: Any) -> torch.Tensor:
    with torch.no_grad():
        return model(token_ids(), **kwargs).logits


def _quiet(call: Callable[[], Any]) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft warns about mixed models being experimental, and more
        return call()


def _saved_by_peft(folder: Path, adapters: Sequence[tuple[str, list[str]]]) -> None:
    """Each adapter made by peft alone (random, trained-looking) and saved in ``folder/<name>``;
    a name's method is the name without trailing digits (``lora2`` is a second LoRA)."""
    for seed, (name, targets) in enumerate(adapters):
        config = ADAPTERS[name.rstrip("0123456789")][1](targets)
        model = _quiet(lambda config=config: peft.get_peft_model(tiny_llama(), config))
        _randomise(model, seed)
        _quiet(lambda model=model, name=name: model.save_pretrained(str(folder / name)))


def _load_both(folder: Path, names: Sequence[str]) -> tuple[peft.PeftMixedModel, PeftMixedModel]:
    """peft's mixed model and ours, with the adapters in ``folder`` loaded in the order given."""
    reference = _quiet(lambda: peft.PeftMixedModel.from_pretrained(tiny_llama(), str(folder / names[0]), names[0]))
    ours = PeftMixedModel.from_pretrained(tiny_llama(), folder / names[0], names[0])
    for name in names[1:]:
        _quiet(lambda name=name: reference.load_adapter(str(folder / name), name))
        ours.load_adapter(folder / name, name)
    return reference.eval(), ours.eval()


def noise_floor(reference: peft.PeftMixedModel) -> float:
    """How far peft's merged mixed model is from its unmerged one, with the active adapters."""
    merged = _quiet(lambda: copy.deepcopy(reference).merge_and_unload())
    return (_logits(merged) - _logits(reference)).abs().max().item()


def assert_same(ours: torch.Tensor, reference: torch.Tensor, floor: float) -> None:
    difference = (ours - reference).abs().max().item()
    assert difference <= floor, f"ours differs from peft by {difference:.3g}, more than peft's own noise floor {floor:.3g}"


def assert_base_restored(model: torch.nn.Module, base: torch.nn.Module) -> None:
    """Unmerged weights are back within 1e-5 of the largest weight (the SDK suite's rule: folding
    an update in and out rounds, and for OFT's rotation more than for a sum)."""
    expected = base.state_dict()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, expected[key], atol=1e-5 * max(1.0, expected[key].abs().max().item()), rtol=0)


def _set(models: Sequence[Any], names: list[str]) -> None:
    for model in models:
        _quiet(lambda model=model: model.set_adapter(names))


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("other", OTHERS)
def test_switched_combined_disabled_and_merged_as_peft(other: str, layout: str, tmp_path: Path) -> None:
    lora_targets, other_targets = LAYOUTS[layout]
    _saved_by_peft(tmp_path, [("lora", lora_targets), (other, other_targets)])
    reference, ours = _load_both(tmp_path, _order(other))
    base = _logits(tiny_llama())

    _set([reference, ours], ["lora", other])
    floor = noise_floor(reference)
    combined = _logits(ours)
    assert_same(combined, _logits(reference), floor)
    for name in ("lora", other):
        _set([reference, ours], [name])
        assert ours.active_adapters == [name]
        alone = _logits(ours)
        assert_same(alone, _logits(reference), floor)
        assert (alone - base).abs().max() > 1e-3 and (alone - combined).abs().max() > 1e-4, f"{name} alone must differ"
    with reference.disable_adapter(), ours.disable_adapter():
        assert torch.equal(_logits(ours), base)

    _set([reference, ours], ["lora", other])
    round_trip = copy.deepcopy(ours)  # unmerging OFT is exact only to rounding: merge a fresh copy below
    round_trip.merge_adapter()
    assert_same(_logits(round_trip), combined, floor)
    round_trip.unmerge_adapter()
    assert_base_restored(round_trip.unload(), tiny_llama())
    merged = ours.merge_and_unload().state_dict()
    expected = _quiet(lambda: reference.merge_and_unload()).state_dict()
    assert merged.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(merged[key], value), f"{key}: merged weight differs from peft's"


@pytest.mark.parametrize("other", OTHERS)
def test_ours_saved_load_in_peft_s_mixed_model(other: str, tmp_path: Path) -> None:
    """A mixed model made here saves each adapter as its method's own PEFT folder (peft's mixed
    model cannot save); peft's mixed model loads them and computes the same."""
    targets = {"lora": ["q_proj", "v_proj"], other: ["q_proj", "down_proj"]}
    first, second = _order(other)
    ours = get_peft_model(tiny_llama(), get_config(first, target_modules=targets[first], **REQUIRED.get(first, {})), first, mixed=True)
    ours.add_adapter(second, get_config(second, target_modules=targets[second], **REQUIRED.get(second, {})))
    ours.set_adapter(["lora", other])
    assert all(p.requires_grad for n, p in ours.named_parameters() if ".lora_" in n), "active adapters train"
    _randomise(ours, seed=5)
    ours.eval()
    ours.save_pretrained(tmp_path)

    reference = _quiet(lambda: peft.PeftMixedModel.from_pretrained(tiny_llama(), str(tmp_path / first), first))
    _quiet(lambda: reference.load_adapter(str(tmp_path / second), second))
    _quiet(lambda: reference.set_adapter(["lora", other]))
    reference.eval()
    assert (_logits(ours) - _logits(tiny_llama())).abs().max() > 1e-3
    assert_same(_logits(ours), _logits(reference), noise_floor(reference))


@pytest.mark.skipif(not {"loha", "oft"} <= set(OTHERS), reason="needs the LoHa and OFT plugins")
def test_three_methods_on_one_module_merge_in_forward_order(tmp_path: Path) -> None:
    """LoHa, OFT and LoRA stacked on q_proj in that order (OFT in the middle): unmerged, ours
    equals peft's mixed model. Merged, ours folds the layers in innermost first, the order
    forward applies them; peft's merge_and_unload folds the second layer first, so its merged
    model is off by about 2e-3 here. Ours must be no farther from the exact result (the unmerged
    model in float64) than peft's merged model is when the same three adapters are stacked in an
    order its merge gets right (OFT outermost)."""
    _saved_by_peft(tmp_path, [("loha", ["q_proj"]), ("oft", ["q_proj"]), ("lora", ["q_proj"])])
    reference, ours = _load_both(tmp_path, ["loha", "oft", "lora"])
    _set([reference, ours], ["loha", "oft", "lora"])
    stack = layer_stack(ours.model.model.layers[0].self_attn.q_proj)
    assert [layer.adapter_names for layer in stack] == [["lora"], ["oft"], ["loha"]]
    unmerged = _logits(ours)
    assert torch.equal(unmerged, _logits(reference))

    exact = _logits(copy.deepcopy(ours).double())
    reordered, _ = _load_both(tmp_path, ["loha", "lora", "oft"])
    _set([reordered], ["loha", "oft", "lora"])
    peft_error = (_logits(_quiet(lambda: reordered.merge_and_unload())).double() - exact).abs().max().item()
    assert_same(_logits(ours.merge_and_unload()).double(), exact, peft_error)
    assert (_logits(_quiet(lambda: reference.merge_and_unload())).double() - exact).abs().max() > 1e-3


@pytest.mark.parametrize("other", OTHERS)
def test_mixed_batch_rows_take_adapters_of_either_method(other: str, tmp_path: Path) -> None:
    """One adapter (of either method) or the base per row, in one forward: each row is what
    peft's mixed model gives with that adapter alone (peft has no per-row adapters here)."""
    _saved_by_peft(tmp_path, [("lora", ["q_proj", "v_proj"]), (other, ["q_proj", "o_proj"])])
    reference, ours = _load_both(tmp_path, _order(other))
    alone = {BASE_ADAPTER: _logits(tiny_llama())}
    for name in ("lora", other):
        _set([reference], [name])
        alone[name] = _logits(reference)
    _set([reference, ours], ["lora", other])
    floor = noise_floor(reference)
    rows = [other, BASE_ADAPTER, "lora"]
    mixed = _logits(ours, adapter_names=rows)
    for i, name in enumerate(rows):
        assert_same(mixed[i], alone[name][i], floor)


@pytest.mark.parametrize("other", OTHERS)
def test_delete_one_method_leaves_the_other(other: str, tmp_path: Path) -> None:
    _saved_by_peft(tmp_path, [("lora", ["q_proj", "v_proj"]), (other, ["q_proj", "o_proj"])])
    reference, ours = _load_both(tmp_path, _order(other))
    _set([reference, ours], ["lora", other])
    _set([reference], ["lora"])
    lora_alone = _logits(reference)

    ours.delete_adapter(other)
    assert ours.active_adapters == ["lora"] and list(ours.peft_config) == ["lora"]
    assert not any(".base_layer.base_layer." in key for key in ours.state_dict()), "the emptied layer left its stack"
    assert not any(key.endswith("o_proj.base_layer.weight") for key in ours.state_dict()), "o_proj is a plain Linear again"
    assert torch.equal(_logits(ours), lora_alone)


#: Every other tuner plugin, and the fields its config needs here: peft 0.21's mixed model takes
#: LoRA, LoHa, LoKr, AdaLoRA, OFT and SHiRA only (COMPATIBLE_TUNER_TYPES).
NOT_MIXED: dict[str, dict[str, Any]] = {
    "ia3": {"target_modules": ["q_proj"], "feedforward_modules": []},
    "ln_tuning": {},
    "trainable_tokens": {},
    **{name: {"target_modules": ["q_proj"]} for name in ("hra", "miss", "road", "randlora", "c3a", "vblora", "boft", "vera", "fourierft")},
}


@pytest.mark.parametrize("method", sorted(NOT_MIXED))
def test_methods_peft_does_not_mix_are_refused(method: str) -> None:
    """peft's mixed model refuses IA3, LayerNorm tuning and the newer methods (its list of
    compatible types); ours refuses methods that do not declare the ``mixed-model`` capability,
    naming the method."""
    if not _installed(method):
        pytest.skip(f"kernel-core-{method.replace('_', '-')} is not installed")
    fields = NOT_MIXED[method]
    peft_config = peft.get_peft_config(config_to_dict(get_config(method, **fields)))
    with pytest.raises(ValueError, match="not compatible with the `PeftMixedModel`"):
        _quiet(lambda: peft.get_peft_model(tiny_llama(), peft_config, mixed=True))
    with pytest.raises(InvalidAdapterConfigError, match=f"{method}.*mixed-model"):
        get_peft_model(tiny_llama(), get_config(method, **fields), mixed=True)
    model = get_peft_model(tiny_llama(), get_config("lora", target_modules=["q_proj"]), mixed=True)
    with pytest.raises(InvalidAdapterConfigError, match=f"{method}.*mixed-model"):
        model.add_adapter("other", get_config(method, **fields))
    assert list(model.peft_config) == ["default"]


#: A float64 bound on two orders of summing the same additive updates: far above float64
#: reordering (~1e-15 on logits of order 1), far below any update missed or applied twice (> 1e-3).
REORDERED_FLOAT64_BOUND = 1e-9


@pytest.mark.skipif("shira" not in OTHERS, reason="needs the SHiRA plugin")
def test_shira_over_another_method_s_layer_adds_its_update(tmp_path: Path) -> None:
    """peft refuses SHiRA over another layer ("SHiRA does not support nested base layers");
    ours stacks it, adding ``x ΔWᵀ`` to the inner layers' output. Both updates are additive, so
    this is peft's model with SHiRA added first: compared in float64, where the two orders of
    summation agree to rounding, alone, combined, per row, disabled and merged."""
    _saved_by_peft(tmp_path, [("lora", ["q_proj", "v_proj"]), ("shira", ["q_proj", "o_proj"])])
    with pytest.raises(ValueError, match="nested base layers"):
        _load_both(tmp_path, ["lora", "shira"])
    ours = PeftMixedModel.from_pretrained(tiny_llama(), tmp_path / "lora", "lora")
    ours.load_adapter(tmp_path / "shira", "shira")
    assert [layer.adapter_names for layer in layer_stack(ours.model.model.layers[0].self_attn.q_proj)] == [["shira"], ["lora"]]
    reference, _ = _load_both(tmp_path, ["shira", "lora"])
    ours, reference = ours.eval().double(), reference.double()
    alone = {BASE_ADAPTER: _logits(tiny_llama().double())}
    for names in (["lora", "shira"], ["lora"], ["shira"]):
        _set([reference, ours], names)
        expected = _logits(reference)
        assert_same(_logits(ours), expected, REORDERED_FLOAT64_BOUND)
        alone["+".join(names)] = expected
    rows = ["shira", BASE_ADAPTER, "lora"]
    for i, row in enumerate(_logits(ours, adapter_names=rows)):
        assert_same(row, alone[rows[i]][i], REORDERED_FLOAT64_BOUND)
    with ours.disable_adapter():
        assert torch.equal(_logits(ours), alone[BASE_ADAPTER])
    _set([ours], ["lora", "shira"])
    assert_same(_logits(ours.merge_and_unload()), alone["lora+shira"], REORDERED_FLOAT64_BOUND)


def _peft_stack(module: torch.nn.Module) -> list[list[str]]:
    """The adapter names of each peft layer stacked on a module, outermost first."""
    stack = []
    while hasattr(module, "base_layer"):
        stack.append(sorted({name for attr in module.adapter_layer_names for name in getattr(module, attr).keys()}))
        module = module.base_layer
    return stack


@pytest.mark.parametrize("order", [("lora", "adalora", "lora2"), ("lora", "oft", "lora2", "oft2"), ("lora", "lora2", "adalora")])
def test_a_later_adapter_joins_only_the_outermost_layer_as_peft(order: tuple[str, ...], tmp_path: Path) -> None:
    """As peft stacks them: a new adapter joins a module's outermost layer when that layer is its
    method's, else its method's new layer wraps the stack (a second OFT after LoRA rotates what
    LoRA sees, so joining the first OFT layer would compute something else; peft loads
    no OFT folder first, hence LoRA first). AdaLoRA's layer,
    whose containers are named like LoRA's, is never taken for LoRA's."""
    if not all(_installed(name.rstrip("0123456789")) for name in order):
        pytest.skip(f"needs the plugins of {order}")
    _saved_by_peft(tmp_path, [(name, ["q_proj", "v_proj"]) for name in order])
    reference, ours = _load_both(tmp_path, list(order))
    _set([reference, ours], list(order))
    expected = _peft_stack(reference.base_model.model.model.layers[0].self_attn.q_proj)
    assert [layer.adapter_names for layer in layer_stack(ours.model.model.layers[0].self_attn.q_proj)] == expected
    floor = noise_floor(reference)
    assert_same(_logits(ours), _logits(reference), floor)
    for name in order:
        _set([reference, ours], [name])
        assert_same(_logits(ours), _logits(reference), floor)


@pytest.mark.skipif("adalora" not in OTHERS, reason="needs the AdaLoRA plugin")
def test_adalora_trained_in_a_mixed_model_saves_its_pruned_adapter(tmp_path: Path) -> None:
    """AdaLoRA keeps its training in a mixed model (peft's mixed model has neither its
    regulariser nor update_and_allocate, and cannot load a pruned AdaLoRA file): its layers under
    LoRA's are allocated by their module names, and the saved folder holds the pattern's ranks,
    which peft's AdaLoRA and ours read alike."""
    torch.manual_seed(0)
    fields = {"target_modules": ["q_proj", "v_proj", "o_proj"], "init_r": 4, "target_r": 1, "total_step": 6, "tinit": 1, "tfinal": 2}
    ours = get_peft_model(tiny_llama(), get_config("adalora", init_lora_weights=False, **fields), "ada", mixed=True)
    ours.add_adapter("lora", get_config("lora", target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    ours.set_adapter(["ada", "lora"])
    assert isinstance(ours.model.model.layers[0].self_attn.q_proj.base_layer, type(ours.model.model.layers[0].self_attn.o_proj))
    ours.train()
    trained = [p for p in ours.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=0.05)
    generator = torch.Generator().manual_seed(5)
    for step in range(1, 7):
        batch = torch.randint(0, 64, (2, 9), generator=generator)
        ours(batch, labels=batch).loss.backward()
        optimizer.step()
        ours.on_optimizer_step(step)
        optimizer.zero_grad()
    ours.eval()
    pattern = ours.peft_config["ada"].rank_pattern
    modules = {f"model.layers.{i}.self_attn.{m}.lora_E" for i in range(2) for m in ("q_proj", "v_proj", "o_proj")}
    assert pattern is not None and set(pattern) == modules and any(not all(kept) for kept in pattern.values())
    ours.save_pretrained(tmp_path, ["ada"])
    ours.set_adapter("ada")

    reference = _quiet(lambda: peft.PeftModel.from_pretrained(tiny_llama(), str(tmp_path / "ada")).eval())
    loaded = PeftMixedModel.from_pretrained(tiny_llama(), tmp_path / "ada", "ada")
    assert_same(_logits(loaded), _logits(reference), noise_floor(reference))
    # the file keeps what was trained: compared in float64 as the AdaLoRA interop test does
    # (in float32 dropping pruned triplets rather than zeroing them rounds in another order)
    assert_same(_logits(loaded.double()), _logits(copy.deepcopy(ours).double()), 1e-9)


def test_methods_sharing_a_prefix_share_a_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Two methods whose containers are named alike (a twin of LoRA, as AdaLoRA's share LoRA's
    ``lora_``) stack on one module: the twin's adapter gets its own layer over LoRA's, and each
    adapter's file holds its own tensors only, under its module's name."""
    from kernel_core.contracts.records import TunerSpec
    from kernel_core.peft import model as model_module
    from kernel_core.peft.config import Method, get_method

    lora = get_method("lora")
    twin = Method(TunerSpec(name="twin", description="a", implementation="x:y", peft_type="LORA", capabilities=frozenset({"mixed-model"})), lora.tuner)
    twin_config = get_config("lora", target_modules=["q_proj", "o_proj"], init_lora_weights=False)
    real = model_module.method_of
    monkeypatch.setattr(model_module, "method_of", lambda config: twin if config is twin_config else real(config))
    model = get_peft_model(tiny_llama(), get_config("lora", target_modules=["q_proj", "v_proj"], init_lora_weights=False), mixed=True)
    model.add_adapter("other", twin_config)
    attention = model.model.model.layers[0].self_attn
    assert [layer.adapter_names for layer in layer_stack(attention.q_proj)] == [["other"], ["default"]]
    assert [layer.adapter_names for layer in layer_stack(attention.o_proj)] == [["other"]]
    model.save_pretrained(tmp_path)
    state = model.state_dict()
    for name, folder, targets in (("default", tmp_path, {"q_proj", "v_proj"}), ("other", tmp_path / "other", {"q_proj", "o_proj"})):
        saved = load_file(folder / "adapter_model.safetensors")
        assert {key.split(".")[-3] for key in saved} == targets and len(saved) == 2 * 2 * len(targets), sorted(saved)
        assert not any("base_layer" in key for key in saved)
        own = [value for key, value in state.items() if f".{name}." in key]
        assert all(sum(torch.equal(value, mine) for mine in own) == 1 for value in saved.values()), f"{name}'s file holds another's tensors"


def test_a_plain_peft_model_still_holds_one_method() -> None:
    model = get_peft_model(tiny_llama(), get_config("lora", target_modules=["q_proj"]))
    with pytest.raises(InvalidAdapterConfigError, match="one method per model.*mixed=True"):
        model.add_adapter("other", get_config("ia3", target_modules=["q_proj"], feedforward_modules=[]))
