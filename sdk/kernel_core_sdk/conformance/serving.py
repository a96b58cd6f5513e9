"""The conformance suite of a tuner plugin's serving (``TunerSpec.serving``, ``kernel_core.contracts.serving``).

An out-of-tree author who writes an :class:`~kernel_core.contracts.serving.AdapterServing`
subclasses :class:`AdapterServingConformance` and learns whether the engine serves their adapters
as the PEFT forward computes them. On a tiny random Llama the suite saves (with a word-level
tokenizer it builds, so nothing is downloaded), it checks: the record names a serving class that
subclasses the contract, and ``slot_nbytes`` is what ``__init__`` allocates; an engine serving
two adapters of the kind beside base rows in one batch gives each request the greedy tokens of
:class:`kernel_core.peft.PeftModel` with that adapter alone (a loop of whole-sequence forwards),
and base rows the base model's (where HF ``peft`` is installed and has the kind, it must give
those tokens too); the same with fewer slots than adapters (eviction, and a slot
written over another adapter's); a corrupted folder (a tensor of the wrong shape, a foreign
tensor) refused at load by ``convert`` with an ``AdapterLoadError`` that starts with ``where``
and names the tensor; ``begin_step(None)`` / ``end_step`` leave the model computing the base.

The plugin must be installed (the engine finds servings through the tuners' entry points).
"""

from __future__ import annotations

import gc
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from kernel_core.contracts.records import PluginKind, TunerSpec
from kernel_core.contracts.serving import AdapterServing, ServingContext, SlotBatch
from kernel_core.contracts.tuner import BaseTunerConfig, Tuner
from kernel_core.engine.components import kernel_selector
from kernel_core.engine.plugin_options import PluginOptions
from kernel_core.errors import AdapterLoadError
from kernel_core.plugins import get_plugin_manager
from kernel_core.llm import LLM
from kernel_core.peft import PeftModel, get_peft_model
from kernel_core.sampling_params import SamplingParams
from kernel_core_sdk.conformance._plugin import PluginUnderTest
from kernel_core_sdk.peft_oracle import peft_load, quiet, randomise, rewrite_adapter_tensors

#: Vocabulary of the suite's word-level tokenizer (and its model).
VOCAB = 128
MAX_TOKENS = 6
GREEDY = SamplingParams(temperature=0, max_tokens=MAX_TOKENS)
#: Prompts as token ids, of different lengths (one longer than a 16-token KV block).
PROMPTS: tuple[list[int], ...] = (
    [5, 17, 99, 42],
    [7, 3, 120, 64, 11, 88, 23, 50, 2, 31],
    [int(t) for t in torch.randint(4, VOCAB, (21,), generator=torch.Generator().manual_seed(2))],
)
#: The two adapters each test loads, by the seed their random values are drawn with.
ADAPTERS = {"first": 11, "second": 12}
#: Engine settings of the mixed-batch test: slots for both adapters.
ENGINE: dict[str, Any] = dict(
    enable_lora=True, max_loras=3, max_lora_rank=16, max_virtual_tokens=16, num_kv_blocks=64, block_size=16
)
#: ... and with one slot for two adapters, so that each is evicted for the other.
FEW_SLOTS: dict[str, Any] = dict(ENGINE, max_loras=1, max_cpu_loras=1)


def save_tiny_model(folder: Path, seed: int = 0) -> Path:
    """A 2-layer random Llama (hidden 64, grouped-query attention) with a word-level tokenizer of
    :data:`VOCAB` tokens and no end-of-sequence token (greedy runs always last ``max_tokens``),
    saved to ``folder``: a model the engine serves, made without a download."""
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = {f"w{i}": i for i in range(VOCAB)}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(words, unk_token="w0")), unk_token="w0")
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False, bos_token_id=None,
        eos_token_id=None, pad_token_id=None,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def load_base(folder: Path) -> Any:
    """The saved model in transformers, float32, eval mode."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def greedy_by_forward(model: Any, prompt: list[int], steps: int = MAX_TOKENS) -> list[int]:
    """Greedy tokens as a loop of whole-sequence forwards (no cache, no ``generate``)."""
    sequence = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(steps):
            logits = model(input_ids=sequence, attention_mask=torch.ones_like(sequence)).logits
            sequence = torch.cat([sequence, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return sequence[0, len(prompt):].tolist()


def make_llm(base: Path, adapters: dict[str, Path], settings: dict[str, Any]) -> LLM:
    """An engine on the model folder ``base`` with ``adapters`` loaded by name."""
    llm = LLM(str(base), **settings)
    for name, folder in adapters.items():
        llm.load_adapter(name, folder)
    return llm


def tokens(llm: LLM, prompts: list[list[int]], names: list[str | None]) -> list[list[int]]:
    """The engine's greedy tokens, one request per prompt, all in one ``generate``."""
    outputs = llm.generate(prompts, GREEDY, adapter=names)
    assert all(o.outputs[0].finish_reason != "error" for o in outputs), [o.outputs[0].error for o in outputs]
    return [list(o.outputs[0].token_ids) for o in outputs]


def live_storages() -> dict[int, int]:
    """Data pointer -> bytes of every storage a live Python tensor views (packed, opaque
    tensors left out: they are never slots)."""
    gc.collect()
    with warnings.catch_warnings():  # isinstance on every object touches deprecated torch aliases
        warnings.simplefilter("ignore")
        tensors = [t for t in gc.get_objects() if isinstance(t, torch.Tensor)]
    return {
        t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
        for t in tensors
        if t.layout == torch.strided and t.device.type != "meta"
    }


class AdapterServingConformance(PluginUnderTest):
    """Subclass as ``TestMyServing(AdapterServingConformance)``; the tuner plugin must be installed.

    Fixtures you supply:

    - ``plugin_module``: the tuner's entry-point module (``plugin_name`` when it registers several).
    - ``tuner_config``: the config of the adapters the tests make (e.g. ``LoraConfig(r=4,
      target_modules=[...])``); every test serves two adapters of it.

    Fixtures you may override:

    - ``make_adapter(base, folder, seed) -> folder``: a PEFT folder of the kind for the model
      folder ``base``; default :func:`kernel_core.peft.get_peft_model` with ``tuner_config``,
      every trainable tensor moved off its init (seeded), ``save_pretrained``. Override to save
      with the real ``peft`` instead.
    - ``engine_settings`` / ``few_slot_settings``: the engine's settings (:data:`ENGINE`,
      :data:`FEW_SLOTS`); raise ``max_lora_rank`` or ``max_virtual_tokens`` for larger adapters.

    The oracle is :class:`kernel_core.peft.PeftModel` loading the same folder (a loop of
    whole-sequence forwards, float32); where HF ``peft`` is installed and has the kind, a test
    checks that it gives the same tokens on the same folders.
    """

    kind = PluginKind.TUNER
    contract = Tuner

    @pytest.fixture(scope="class")
    @classmethod
    def base_folder(cls, tmp_path_factory: pytest.TempPathFactory) -> Path:
        return save_tiny_model(tmp_path_factory.mktemp("serving-base"))

    @pytest.fixture
    def make_adapter(self, tuner_config: BaseTunerConfig) -> Callable[[Path, Path, int], Path]:
        def make(base: Path, folder: Path, seed: int) -> Path:
            model = get_peft_model(load_base(base), tuner_config)
            randomise(model, seed)
            model.save_pretrained(folder)
            return folder

        return make

    @pytest.fixture
    def adapters(self, base_folder: Path, make_adapter: Callable[[Path, Path, int], Path], tmp_path: Path) -> dict[str, Path]:
        return {name: make_adapter(base_folder, tmp_path / name, seed) for name, seed in ADAPTERS.items()}

    @pytest.fixture
    def engine_settings(self) -> dict[str, Any]:
        return dict(ENGINE)

    @pytest.fixture
    def few_slot_settings(self) -> dict[str, Any]:
        return dict(FEW_SLOTS)

    @pytest.fixture
    def serving_class(self, plugin_spec: TunerSpec) -> type[AdapterServing]:
        assert plugin_spec.serving is not None, f"tuner {plugin_spec.name!r} names no serving (TunerSpec.serving)"
        return plugin_spec.load_serving()

    @pytest.fixture
    def expected(self, base_folder: Path, adapters: dict[str, Path]) -> dict[str | None, list[list[int]]]:
        """kernel_core.peft's greedy tokens per adapter (None: the base model) and prompt."""
        out: dict[str | None, list[list[int]]] = {None: [greedy_by_forward(load_base(base_folder), p) for p in PROMPTS]}
        for name, folder in adapters.items():
            model = PeftModel.from_pretrained(load_base(base_folder), folder).eval()
            out[name] = [greedy_by_forward(model, p) for p in PROMPTS]
        return out

    @pytest.fixture
    def llm(self, base_folder: Path, adapters: dict[str, Path], engine_settings: dict[str, Any]) -> LLM:
        return make_llm(base_folder, adapters, engine_settings)

    @staticmethod
    def serving_of(llm: LLM, plugin_spec: TunerSpec) -> AdapterServing:
        return llm.engine.adapters.kinds.servings[plugin_spec.peft_type]

    # -- the record and the slots ------------------------------------------------------------

    def test_record_names_a_serving_class(self, plugin_spec: TunerSpec, serving_class: type) -> None:
        assert isinstance(serving_class, type) and issubclass(serving_class, AdapterServing), (
            f"{plugin_spec.serving} must subclass kernel_core.contracts.serving.AdapterServing"
        )

    def test_slot_nbytes_is_what_init_allocates(
        self, base_folder: Path, serving_class: type[AdapterServing], engine_settings: dict[str, Any]
    ) -> None:
        """``slot_nbytes`` is checked against free memory before ``__init__``: it must not be
        less than what ``__init__`` allocates and keeps (within 10%), nor grossly more. Measured
        on the model of an engine without adapter serving, with the engine's settings."""
        settings = {**engine_settings, "enable_lora": False}
        engine = LLM(str(base_folder), **settings).engine
        model, device = engine.components.model, engine.components.device
        select_kernel = kernel_selector(
            PluginOptions(get_plugin_manager(), engine.config.plugin_options), engine.components.platform,
            engine.components.dtype,
        )
        context = ServingContext(
            max_slots=engine_settings["max_loras"], max_rank=engine_settings["max_lora_rank"],
            dtype=engine.components.dtype, device=device, settings=engine.config.model_dump(), select_kernel=select_kernel,
        )
        reported = serving_class.slot_nbytes(model, context)
        assert isinstance(reported, int) and reported >= 0
        before = live_storages()
        serving = serving_class(model, context)
        allocated = sum(n for ptr, n in live_storages().items() if ptr not in before)
        assert serving is not None and 0.9 * allocated <= reported <= 2 * allocated + 4096, (
            f"slot_nbytes says {reported} bytes; __init__ allocated and keeps {allocated}"
        )

    # -- serving against the PEFT forward ----------------------------------------------------

    def test_adapters_change_the_output(self, expected: dict[str | None, list[list[int]]]) -> None:
        """The oracle is not vacuous: each adapter moves some greedy tokens."""
        for name in ADAPTERS:
            assert expected[name] != expected[None], f"adapter {name!r} gives the base model's tokens: make it larger"

    def test_hf_peft_agrees_with_the_oracle(
        self, base_folder: Path, adapters: dict[str, Path], plugin_spec: TunerSpec,
        expected: dict[str | None, list[list[int]]],
    ) -> None:
        """Where HF ``peft`` is installed and has the kind, it loads the same folders and gives
        the oracle's greedy tokens: what the engine is compared with is what peft computes."""
        peft = pytest.importorskip("peft")
        if plugin_spec.peft_type not in {kind.value for kind in peft.PeftType}:
            pytest.skip(f"peft has no {plugin_spec.peft_type} adapters")
        for name, folder in adapters.items():
            reference = peft_load(lambda: load_base(base_folder), folder)
            got = quiet(lambda: [greedy_by_forward(reference, p) for p in PROMPTS])
            assert got == expected[name], f"adapter {name!r}: HF peft's greedy tokens differ from kernel_core.peft's"

    def test_mixed_batch_equals_peft_per_adapter(self, llm: LLM, expected: dict[str | None, list[list[int]]]) -> None:
        self.assert_mixed_batch(llm, expected)

    def test_fewer_slots_than_adapters(
        self, base_folder: Path, adapters: dict[str, Path], few_slot_settings: dict[str, Any],
        expected: dict[str | None, list[list[int]]],
    ) -> None:
        """One slot, two adapters: each evicts the other and is written over its slot."""
        llm = make_llm(base_folder, adapters, few_slot_settings)
        self.assert_mixed_batch(llm, expected)
        self.assert_mixed_batch(llm, expected)  # again, each adapter read back into a used slot

    def assert_mixed_batch(self, llm: LLM, expected: dict[str | None, list[list[int]]]) -> None:
        """Base rows and both adapters interleaved, each prompt on each."""
        names = [None, *ADAPTERS]
        cases = [(names[(i + j) % len(names)], j) for i in range(len(names)) for j in range(len(PROMPTS))]
        got = tokens(llm, [PROMPTS[j] for _, j in cases], [name for name, _ in cases])
        wrong = [(name, j) for (name, j), g in zip(cases, got) if g != expected[name][j]]
        assert not wrong, f"(adapter, prompt) whose greedy tokens differ from the PEFT forward's: {wrong}"

    # -- refusals ----------------------------------------------------------------------------

    @pytest.mark.parametrize("corruption", ["wrong-shape", "foreign"])
    def test_convert_refuses_a_corrupted_folder_naming_the_tensor(
        self, llm: LLM, adapters: dict[str, Path], tmp_path: Path, corruption: str
    ) -> None:
        folder = shutil.copytree(adapters["first"], tmp_path / "corrupted")
        named: list[str] = []

        def corrupt(tensors: dict[str, torch.Tensor]) -> None:
            key = sorted(tensors)[0]
            if corruption == "wrong-shape":
                tensors[key] = torch.cat([tensors[key], tensors[key]], dim=-1)
                named.append(key)
            else:
                foreign = f"{key.rpartition('.')[0] or 'base_model.model'}.not_an_adapter_tensor"
                tensors[foreign] = torch.ones(3)
                named.append(foreign)

        rewrite_adapter_tensors(folder, corrupt)
        with pytest.raises(AdapterLoadError) as refused:
            llm.load_adapter("corrupted", folder)
        where = f"adapter 'corrupted' ({folder})"
        message = str(refused.value)
        assert message.startswith(where), f"the message must start with {where!r}: {message}"
        assert _names(message, named[0]), f"the message must name the tensor {named[0]!r}: {message}"
        assert "corrupted" not in [info.name for info in llm.list_adapters()]

    # -- the base model between steps --------------------------------------------------------

    @pytest.mark.parametrize("reset", ["begin_step(None)", "end_step"])
    def test_begin_step_none_and_end_step_leave_the_base_model(
        self, llm: LLM, plugin_spec: TunerSpec, expected: dict[str | None, list[list[int]]],
        monkeypatch: pytest.MonkeyPatch, reset: str,
    ) -> None:
        """With the slots holding both adapters, each base-only step first makes the serving
        active on every slot (rows that are not this step's), then resets it as named: the
        step's forward computes the base model."""
        self.assert_mixed_batch(llm, expected)
        serving = self.serving_of(llm, plugin_spec)
        device = llm.engine.components.device
        every_slot = [slot for slot in range(llm.engine.config.max_loras) for _ in range(2)]
        active = SlotBatch.from_token_slots(every_slot, device, torch.arange(len(every_slot), device=device))
        begin, ending = serving.begin_step, []

        def stale_then_reset(batch: SlotBatch | None) -> None:
            if ending:  # the default end_step calls begin_step(None)
                return begin(batch)
            assert batch is None, "a base-only step gives this kind no rows"
            begin(active)
            if reset == "end_step":
                ending.append(True)
                serving.end_step()
                ending.clear()
            else:
                begin(None)

        monkeypatch.setattr(serving, "begin_step", stale_then_reset)
        assert tokens(llm, list(PROMPTS), [None] * len(PROMPTS)) == expected[None]


def _names(message: str, key: str) -> bool:
    """Whether ``message`` names the file tensor ``key``: the key, or its module path and last
    part (a serving may name a module without PEFT's ``base_model.model.`` prefix)."""
    module, _, leaf = key.removeprefix("base_model.model.").rpartition(".")
    return key in message or (module in message if module else leaf in message)
