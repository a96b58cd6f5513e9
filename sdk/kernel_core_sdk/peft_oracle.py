"""Hugging Face ``peft`` as the oracle of a tuner plugin's tests: adapters made by peft on tiny
models and moved off their init, files loaded both ways, and "same output" judged against peft's
own noise floor. What the PEFT-method plugins' interop tests compare the plugin with, as
:mod:`kernel_core_sdk.hf_oracle` serves the model plugins.

The noise floor of an adapter is how far peft's merged model is from its unmerged one on the same
input: the two orders of the same float arithmetic. A plugin's output must be no farther from
peft's than that; a tolerance is never loosened to pass. A helper takes another :data:`Floor`
only where the installed peft computes in another (equivalent) form than the plugin follows, and
the plugin's tests then say how that floor is measured (kernel-core-hra on peft before 0.22).

peft is imported when a helper is called, so importing this module stays cheap.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from kernel_core_sdk.tiny_models import token_ids

#: What an output is measured on: a model to a tensor (default :func:`logits` on the tiny token ids).
Output = Callable[[torch.nn.Module], torch.Tensor]


def randomise(model: torch.nn.Module, seed: int = 3, scale: float = 0.3) -> None:
    """Move every trainable tensor off its init (seeded), so that the adapter, and any saved copy
    or trained bias, changes the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(scale * torch.randn(parameter.shape, generator=generator))


def logits(model: torch.nn.Module, **kwargs: Any) -> torch.Tensor:
    """``model``'s logits on :func:`~kernel_core_sdk.tiny_models.token_ids`, without grad
    (``kwargs``: e.g. ``adapter_names`` for a mixed batch)."""
    with torch.no_grad():
        return model(token_ids(), **kwargs).logits


def quiet(call: Callable[[], Any]) -> Any:
    """``call()`` with warnings silenced: peft's notes on its defaults, inexact unmerges and the like."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return call()


def peft_made(build: Callable[[], torch.nn.Module], config: Any, seed: int = 3, folder: Path | None = None) -> Any:
    """A peft model (eval mode) of ``build()`` with an adapter of the peft ``config``, randomised
    with ``seed``, and saved to ``folder`` when one is given."""
    import peft

    reference = quiet(lambda: peft.get_peft_model(build(), config).eval())
    randomise(reference, seed)
    if folder is not None:
        quiet(lambda: reference.save_pretrained(str(folder)))
    return reference


def peft_load(build: Callable[[], torch.nn.Module], folder: Path) -> Any:
    """``folder``'s adapter loaded by peft onto ``build()``, in eval mode."""
    import peft

    return quiet(lambda: peft.PeftModel.from_pretrained(build(), str(folder)).eval())


def assert_peft_reads_config(folder: Path) -> None:
    """peft reads ``folder``'s ``adapter_config.json`` without a warning: it holds only keys the
    method's peft config has (and nothing peft would warn about)."""
    import peft

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        peft.PeftConfig.from_pretrained(str(folder))


def peft_merged(reference: Any) -> torch.nn.Module:
    """A copy of the peft model ``reference`` with its adapter merged by peft (``reference`` is left as it is)."""
    return quiet(lambda: copy.deepcopy(reference).merge_and_unload())


def peft_unloaded(reference: Any) -> torch.nn.Module:
    """A copy of the peft model ``reference`` unloaded by peft, unmerged: the base model, each
    ``modules_to_save`` module its original. peft 0.22's ``unload`` gives that, as ours does; older
    peft kept the active adapter's trained copy, so the originals are put back (a no-op from 0.22)."""
    from peft.utils.other import ModulesToSaveWrapper

    copied = copy.deepcopy(reference)
    originals = {
        name: module.original_module
        for name, module in copied.get_base_model().named_modules()
        if isinstance(module, ModulesToSaveWrapper)
    }
    unloaded = quiet(copied.unload)
    for name, original in originals.items():
        unloaded.set_submodule(name, original)
    return unloaded


def noise_floor(reference: Any, output: Output = logits) -> float:
    """How far peft's merged ``output`` is from its unmerged one, on the same adapter."""
    return (output(peft_merged(reference)) - output(reference)).abs().max().item()


def merged_weights(model: torch.nn.Module) -> torch.Tensor:
    """The weights of ``model`` (peft's or ours) with its active adapters merged (on a copy), in
    one vector by key: an :data:`Output` for a :data:`Floor`."""
    return flat(peft_merged(model).state_dict())


def flat(state: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """A state dict's tensors in one vector, by key."""
    return torch.cat([state[key].flatten() for key in sorted(state)])


#: What an output of ours is judged by, given peft's model, ours and the :data:`Output` measured.
Floor = Callable[[Any, torch.nn.Module, Output], float]


def peft_floor(reference: Any, ours: torch.nn.Module, output: Output = logits) -> float:
    """The default :data:`Floor`: peft's own noise floor (``ours`` plays no part), and none for
    :func:`merged_weights`, which must be peft's bit for bit. A method whose arithmetic is another
    peft version's form passes one of its own (kernel-core-hra on peft before 0.22)."""
    return 0.0 if output is merged_weights else noise_floor(reference, output)


def assert_same(ours: torch.Tensor, reference: torch.Tensor, floor: float) -> None:
    """``ours`` is no farther from peft's ``reference`` than peft's own noise ``floor``."""
    difference = (ours - reference).abs().max().item()
    assert difference <= floor, (
        f"ours differs from peft by {difference:.3g}, more than peft's own noise floor {floor:.3g}"
    )


def assert_changes_output(adapted: torch.Tensor, base: torch.Tensor) -> None:
    """The adapter matters: ``adapted`` differs from the ``base`` model's output (else a test
    comparing outputs would pass with any adapter)."""
    assert (adapted - base).abs().max() > 1e-3, "the adapter must change the output"


def assert_ours_loads_in_peft(
    ours: torch.nn.Module, build: Callable[[], torch.nn.Module], folder: Path, floor: Floor = peft_floor
) -> Any:
    """Our model ``ours`` (its adapter moved off its init) saved to ``folder`` loads in peft onto
    ``build()``: the adapter changes the output, and peft's logits are ours within ``floor``
    (peft's noise floor). Returns peft's model (checks of the saved config are the caller's)."""
    ours_logits = logits(ours)
    ours.save_pretrained(folder)
    reference = peft_load(build, folder)
    assert_changes_output(ours_logits, logits(build()))
    assert_same(ours_logits, logits(reference), floor(reference, ours, logits))
    return reference


def assert_peft_loads_in_ours(
    reference: Any, build: Callable[[], torch.nn.Module], folder: Path, floor: Floor = peft_floor
) -> Any:
    """peft's model ``reference``, its adapter saved in ``folder``, loads in ours onto ``build()``
    for inference (nothing trains) with peft's logits within ``floor`` (peft's noise floor).
    Returns our model."""
    from kernel_core.peft import PeftModel

    ours = quiet(lambda: PeftModel.from_pretrained(build(), folder))
    assert_same(logits(ours), logits(reference), floor(reference, ours, logits))
    assert not any(p.requires_grad for p in ours.parameters()), "loaded for inference: nothing trains"
    return ours


def assert_merges_as_peft(
    reference: Any, build: Callable[[], torch.nn.Module], folder: Path, floor: Floor = peft_floor
) -> Any:
    """peft's adapter in ``folder`` loaded in ours onto ``build()``: merged, our logits stay within
    ``floor`` (peft's noise floor) of our unmerged ones, and ``merge_and_unload`` (on a fresh load)
    gives peft's merged weights (bit for bit by default). Returns our model merged then unmerged,
    for the method's own check of the weights it restores."""
    from kernel_core.peft import PeftModel

    ours = quiet(lambda: PeftModel.from_pretrained(build(), folder))
    unmerged = logits(ours)
    ours.merge_adapter()
    merged_logits = logits(ours)
    ours.unmerge_adapter()
    fresh = quiet(lambda: PeftModel.from_pretrained(build(), folder))
    weights_floor = floor(reference, fresh, merged_weights)
    assert_equal_weights(fresh.merge_and_unload().state_dict(), peft_merged(reference).state_dict(), weights_floor)
    assert_same(merged_logits, unmerged, floor(reference, ours, logits))
    return ours


def assert_mixed_batch(
    build: Callable[[], torch.nn.Module], references: Mapping[str, Any], folder: Path, floor: float | None = None
) -> Any:
    """Two or more peft-made adapters, each saved in ``folder / name``, loaded into one of our
    models with the base, one per row of one forward: each row is what peft gives with that
    adapter alone (within ``floor``; None: the largest of their noise floors), and the adapters
    differ. Returns our model, for checks of its own."""
    from kernel_core.contracts.tuner import BASE_ADAPTER
    from kernel_core.peft import PeftModel

    names = list(references)
    expected = {name: logits(reference) for name, reference in references.items()}
    expected[BASE_ADAPTER] = logits(build())
    if floor is None:
        floor = max(noise_floor(reference) for reference in references.values())
    ours = quiet(lambda: PeftModel.from_pretrained(build(), folder / names[0], adapter_name=names[0]))
    for name in names[1:]:
        quiet(lambda name=name: ours.load_adapter(folder / name, name))
    rows = [names[-1], BASE_ADAPTER, *names[:-1]]
    mixed = logits(ours, adapter_names=rows)
    for i, name in enumerate(rows):
        assert_same(mixed[i], expected[name][i], floor)
    assert (expected[names[0]] - expected[names[1]]).abs().max() > 1e-3, "the two adapters must differ"
    return ours


def assert_equal_weights(ours: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], floor: float = 0.0) -> None:
    """Two state dicts (say ours merged and peft's merged) have the same keys and bit-equal
    tensors, or tensors within a nonzero ``floor`` (a :data:`Floor` of :func:`merged_weights`)."""
    assert ours.keys() == expected.keys()
    for key, value in expected.items():
        same = torch.equal(ours[key], value) if floor == 0 else (ours[key].double() - value.double()).abs().max().item() <= floor
        assert same, f"{key}: merged weight differs from peft's" + (f" by more than {floor:.3g}" if floor else "")


def as_peft_table(table: Mapping[str, Sequence[str] | str]) -> dict[str, list[str] | str]:
    """A per-architecture target table as peft's ``constants`` write it (name lists; a regex string stays one)."""
    return {key: value if isinstance(value, str) else list(value) for key, value in table.items()}


def rewrite_adapter_tensors(folder: Path, edit: Callable[[dict[str, torch.Tensor]], Any]) -> None:
    """Apply ``edit`` to the tensors of ``folder``'s ``adapter_model.safetensors`` (for tests of
    the errors a broken adapter file gets: a tensor of the wrong shape, one missing)."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / "adapter_model.safetensors"))
    edit(tensors)
    save_file(tensors, str(folder / "adapter_model.safetensors"))


def edit_adapter_config(folder: Path, **changes: Any) -> None:
    """Overwrite fields of ``folder``'s ``adapter_config.json`` (a config that no longer fits its tensors)."""
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps(config | changes))


def greedy(model: Any, steps: int = 6, **kwargs: Any) -> torch.Tensor:
    """``model.generate`` greedy on :func:`~kernel_core_sdk.tiny_models.token_ids` (attention
    mask of ones): the prompt and ``steps`` new tokens."""
    ids = token_ids()
    return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=steps, do_sample=False,
                          pad_token_id=0, **kwargs)


def greedy_by_forward(model: Any, steps: int = 6) -> torch.Tensor:
    """Greedy decoding as a loop of plain forwards on the whole sequence (no cache, no
    ``generate``): what :func:`greedy` must give, on any model whose forward is right (a row
    that has produced the model's end-of-sequence token is padded with 0 from then on, as
    ``generate`` pads it)."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    stops = torch.tensor([] if eos is None else [eos] if isinstance(eos, int) else list(eos))
    sequence = token_ids()
    done = torch.zeros(sequence.shape[0], dtype=torch.bool)
    with torch.no_grad():
        for _ in range(steps):
            logits = model(input_ids=sequence, attention_mask=torch.ones_like(sequence)).logits
            step = logits[:, -1].argmax(-1).masked_fill(done, 0)
            done |= torch.isin(step, stops)
            sequence = torch.cat([sequence, step[:, None]], dim=1)
    return sequence


def assert_same_prompt_learning(ours: torch.nn.Module, reference: Any) -> None:
    """A prompt-learning adapter computes in ours what it computes in peft: the same logits (the
    same float arithmetic, so bit-equal, with no merged form to measure a noise floor on) and
    the same greedy tokens, ours through ``generate`` with the cache and without it, peft's as a
    loop of its forwards (peft 0.21.2's ``generate`` is wrong for prompt learning on
    transformers 5.2x, which renamed ``past_key_values`` to ``cache``: with the cache it ignores a
    prefix and repeats virtual tokens at each step, and without it it can drift from its own
    forward: seen with a prefix on a Llama with two key/value heads)."""
    ids = token_ids()
    padded = torch.ones_like(ids)
    padded[0, :2] = 0  # a left-padded row: the prompt's mask and positions as peft places them
    for mask in (torch.ones_like(ids), padded):
        with torch.no_grad():
            ours_logits = ours(input_ids=ids, attention_mask=mask).logits
            reference_logits = quiet(lambda mask=mask: reference(input_ids=ids, attention_mask=mask).logits)
        assert_same(ours_logits, reference_logits, 0.0)
    expected = quiet(lambda: greedy_by_forward(reference))
    assert torch.equal(greedy(ours), expected), "greedy generate (with the cache) differs from peft's"
    assert torch.equal(greedy(ours, use_cache=False), expected), "greedy generate (without the cache) differs from peft's"
