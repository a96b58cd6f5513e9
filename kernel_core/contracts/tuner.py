"""The contract a PEFT-method (tuner) plugin implements.

The core finds target modules, walks the model, keeps track of adapters by name and does
PEFT-format I/O; a tuner says which modules it can adapt, builds the wrapping layer, and says
which base parameters (if any) it trains. A wrapped layer holds any number of named adapters,
computes its output with the active ones, folds them into the base weights and back, and serves
a mixed batch (one adapter per row) with one call per adapter group.

State-dict names follow PEFT: an adapter's tensors live in containers whose attribute name starts
with the tuner's ``prefix`` (``lora_A``, ``lora_magnitude_vector``, ...) and are keyed by adapter
name inside them (``lora_A.default.weight``); the PEFT file drops that adapter-name segment. The
same rule holds for tensors a method keeps once per model rather than per layer (VeRA's shared
projections): a container on ``PeftModel.base_model`` named with the prefix
(``base_model.vera_A.default`` in the model, ``base_model.vera_A`` in the file).
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, PrivateAttr, model_validator
from torch import nn

#: The adapter name that means "no adapter" for a row of a mixed batch (as in PEFT).
BASE_ADAPTER = "__base__"

ConfigT = TypeVar("ConfigT", bound="BaseTunerConfig")


class BaseTunerConfig(BaseModel):
    """Hyper-parameters of one adapter; subclasses add the method's own fields.

    The fields here are the ones every PEFT tuner config has: ``target_modules`` (see
    :mod:`kernel_core.peft.targets`) and provenance. The target filters only some PEFT methods
    have are mixins a method's config inherits when its PEFT config has them, so that
    ``adapter_config.json`` holds exactly the method's keys: :class:`ExcludeModules`,
    :class:`LayerSelection` and :class:`ModulesToSave` (since API 1.4). :class:`TunerConfig` is
    this class with all three, the shape every config had before.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    #: ``adapter_config.json`` keys PEFT writes that this config does not model, with the value
    #: that means "feature off"; :meth:`from_dict` drops them without a warning at that value.
    inert_peft_keys: ClassVar[Mapping[str, Any]] = {}

    target_modules: list[str] | str | None = None
    base_model_name_or_path: str | None = None
    revision: str | None = None
    task_type: str | None = None
    inference_mode: bool = False

    _module_name: str | None = PrivateAttr(default=None)

    @property
    def module_name(self) -> str | None:
        """The module (its dotted name in the transformers model) this config was made for by
        :meth:`for_module`; None on an adapter's own config. Since API 1.4."""
        return self._module_name

    def for_module(self: ConfigT, module_name: str) -> ConfigT:
        """The config module ``module_name`` gets: a copy whose :attr:`module_name` is set, so
        that the layer learns, through its config, what the method must know about that module
        (IA3 derives ``is_feedforward`` from it). Methods with per-module overrides (rank
        patterns) extend this: call ``super().for_module(module_name)`` and update the copy."""
        config = self.model_copy()
        config._module_name = module_name
        return config

    @classmethod
    def from_dict(cls: type[ConfigT], data: Mapping[str, Any]) -> ConfigT:
        """Build from an ``adapter_config.json`` dict. Keys this class does not know are left
        out (``peft_type`` and PEFT's bookkeeping silently, others with one warning naming them)
        so that files from newer PEFT versions still load."""
        known = {key: value for key, value in data.items() if key in cls.model_fields}
        unknown = sorted(key for key in data if key not in cls.model_fields and key not in _PEFT_BOOKKEEPING)
        ignored = [key for key in unknown if not _is_off(data[key], cls.inert_peft_keys.get(key, _NO_DEFAULT))]
        if ignored:
            warnings.warn(
                f"{cls.__name__}: ignoring adapter_config.json settings this version does not support: "
                + ", ".join(f"{key}={data[key]!r}" for key in ignored),
                UserWarning,
                stacklevel=2,
            )
        return cls.model_validate(known)

    def to_dict(self) -> dict[str, Any]:
        """The fields as ``adapter_config.json`` holds them (the core adds ``peft_type``)."""
        return self.model_dump(mode="json")


class ExcludeModules(BaseModel):
    """``exclude_modules``: modules never wrapped, as a list of names or a regex (the same forms
    as ``target_modules``). For configs whose PEFT counterpart has the field."""

    exclude_modules: list[str] | str | None = None


class ModulesToSave(BaseModel):
    """``modules_to_save``: modules trained and saved as full copies per adapter (a classifier
    head). For configs whose PEFT counterpart has the field."""

    modules_to_save: list[str] | None = None


class LayerSelection(BaseModel):
    """``layers_to_transform`` and ``layers_pattern``: keep only targets in the given layer
    indices. For configs whose PEFT counterpart has the fields (LoRA does, IA3 does not)."""

    layers_to_transform: list[int] | int | None = None
    layers_pattern: list[str] | str | None = None

    @model_validator(mode="after")
    def _layer_filters_need_a_list(self: Any) -> Any:
        """As in PEFT: a regex already says which layers it matches, and a layer pattern
        without layer indices selects nothing."""
        if isinstance(getattr(self, "target_modules", None), str) and (self.layers_to_transform is not None or self.layers_pattern):
            raise ValueError("layers_to_transform and layers_pattern need target_modules as a list, not a regex string")
        if self.layers_pattern and self.layers_to_transform is None:
            raise ValueError("layers_pattern needs layers_to_transform: the layer indices to keep")
        return self


class RankPatterns(BaseModel):
    """``rank_pattern`` and ``alpha_pattern``: per-module rank ``r`` and alpha by module-name regex
    (PEFT's matching, :func:`kernel_core.peft.targets.pattern_value`), for configs whose PEFT
    counterpart has them (LoRA, LoHa, LoKr). The config has an ``r`` field and an alpha field
    named by :attr:`alpha_field`; list this mixin before the base class, so that its
    :meth:`for_module` extends the base's. Since API 1.4."""

    #: The config's alpha field: ``"alpha"`` (LoHa, LoKr) or ``"lora_alpha"`` (LoRA).
    alpha_field: ClassVar[str] = "alpha"

    rank_pattern: dict[str, PositiveInt] = Field(default_factory=dict, description="Module-name regex -> r.")
    alpha_pattern: dict[str, int | float] = Field(default_factory=dict, description="Module-name regex -> alpha.")

    def for_module(self: ConfigT, module_name: str) -> ConfigT:
        """The base's per-module copy, with this module's rank and alpha from the patterns."""
        from kernel_core.peft.targets import pattern_value  # the package imports this module

        config = super().for_module(module_name)  # type: ignore[misc]
        alpha = getattr(self, self.alpha_field)
        rank = pattern_value(module_name, self.rank_pattern, self.r)
        module_alpha = pattern_value(module_name, self.alpha_pattern, alpha)
        if (rank, module_alpha) == (self.r, alpha):
            return config
        return config.model_copy(update={"r": rank, self.alpha_field: module_alpha})


class TunerConfig(BaseTunerConfig, ExcludeModules, LayerSelection, ModulesToSave):
    """A config with every target filter: what ``TunerConfig`` was before API 1.4, kept so that
    configs written against 1.1-1.3 keep their fields. A method whose PEFT config has all three
    filters (LoRA) may subclass it; one that lacks some subclasses :class:`BaseTunerConfig` and
    the mixins it has."""


_PEFT_BOOKKEEPING = frozenset({"peft_type", "peft_version", "auto_mapping"})
_NO_DEFAULT = object()


def _is_off(value: Any, inert: Any) -> bool:
    return value is None or value is False or value == {} or value == [] or value == inert


class TunerLayer(nn.Module):
    """A module wrapping ``base_layer`` with named adapters, as PEFT's tuner layers do.

    The core sets :attr:`active_adapters`, :attr:`disable_adapters` and, for one forward of a
    mixed batch, :attr:`row_adapters` (an adapter name, or :data:`BASE_ADAPTER`, per row of the
    input's first dimension). Subclasses implement how one adapter changes the output (and, if
    it does, the input the base layer sees: :meth:`adapter_input`) and how adapters fold into the
    base weights.
    """

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.active_adapters: list[str] = []
        self.merged_adapters: list[str] = []
        self.disable_adapters = False
        self.row_adapters: Sequence[str] | None = None

    def __getattr__(self, name: str) -> Any:
        """An attribute the layer lacks is the wrapped module's (innermost, under any other
        tuner layers), as PEFT's layers expose ``weight`` and ``bias``: in a mixed model
        (:class:`kernel_core.peft.PeftMixedModel`) a layer of one method may wrap another
        method's layer, and ``self.base_layer.weight`` (or ``bias``, ``padding_idx``, ...) still
        reads the real module's, so a method's layer works unchanged on top of another's. Since
        API 1.4 (additive)."""
        state = self.__dict__
        for store in ("_modules", "_parameters", "_buffers"):  # nn.Module's own lookup, inline: it runs
            found = state.get(store)  # for every submodule access of every forward
            if found is not None and name in found:
                return found[name]
        inner = state.get("_modules", {}).get("base_layer")
        if inner is None:  # not built yet
            return super().__getattr__(name)
        while isinstance(inner, TunerLayer):
            inner = inner.base_layer
        return getattr(inner, name)

    @property
    def merged(self) -> bool:
        return bool(self.merged_adapters)

    @property
    @abstractmethod
    def adapter_names(self) -> list[str]:
        """The adapters this layer holds."""

    @abstractmethod
    def update_layer(self, adapter_name: str, config: BaseTunerConfig) -> None:
        """Add (or re-initialise) one adapter, with the config this module gets. A ``ValueError``
        refuses the module (a shape the method cannot take): the core names the module and the
        method beside the message, and takes the adapter back out of every module it reached."""

    @abstractmethod
    def delete_adapter(self, adapter_name: str) -> None:
        """Drop one adapter's parameters."""

    @abstractmethod
    def adapter_output(self, adapter_name: str, x: torch.Tensor, result: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """``result`` (the output so far for input ``x``) with one adapter's effect applied."""

    def adapter_input(self, adapter_name: str, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The input the base layer sees with this adapter (``x`` is the input so far); the
        default leaves it unchanged. Methods that transform a layer's input (IA3 scales the
        input of its feed-forward modules) override this instead of :meth:`forward`, and keep
        mixed batches: the base layer still runs once for every row. Since API 1.4."""
        return x

    @abstractmethod
    def merge(self, adapter_names: Sequence[str] | None = None) -> None:
        """Fold the given (default: active) adapters into the base weights, so forward costs
        nothing extra; records them in :attr:`merged_adapters`."""

    @abstractmethod
    def unmerge(self) -> None:
        """Undo :meth:`merge` for every merged adapter, restoring the base weights."""

    def set_adapter(self, adapter_names: Sequence[str]) -> None:
        """Make these adapters active; only their parameters require grad afterwards."""
        self.active_adapters = [name for name in adapter_names if name in self.adapter_names]
        for name, parameter in self.adapter_parameters():
            parameter.requires_grad_(name in self.active_adapters)

    def adapter_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """(adapter name, parameter) for every adapter parameter, found by the container layout
        ``<container>.<adapter>[.<tensor>]``."""
        found = []
        for key, parameter in self.named_parameters():
            parts = key.split(".")
            if parts[0] != "base_layer" and len(parts) >= 2:
                found.append((parts[1], parameter))
        return found

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        if self.row_adapters is not None:
            return self._forward_mixed(x, *args, **kwargs)
        if self.merged:
            return self.base_layer(x, *args, **kwargs)
        base_input = x
        for name in self.active_adapters:
            base_input = self.adapter_input(name, base_input, *args, **kwargs)
        result = self.base_layer(base_input, *args, **kwargs)
        for name in self.active_adapters:
            result = self.adapter_output(name, x, result, *args, **kwargs)
        return result

    def _forward_mixed(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """One adapter per row: each adapter's input for its group of rows, the base layer once
        for all rows, then each adapter's effect on its group, one call per adapter."""
        rows = self.row_adapters
        assert rows is not None
        if self.merged:
            raise RuntimeError("a mixed batch (adapter_names) needs unmerged adapters; call unmerge_adapter() first")
        if len(rows) != x.shape[0]:
            raise ValueError(f"adapter_names has {len(rows)} entries but the batch has {x.shape[0]} rows")
        groups = {
            name: torch.tensor([i for i, row in enumerate(rows) if row == name], device=x.device)
            for name in dict.fromkeys(rows)
            if name != BASE_ADAPTER and name in self.adapter_names
        }
        base_input = x
        for name, index in groups.items():
            rows_input = x[index]
            changed = self.adapter_input(name, rows_input, *args, **kwargs)
            if changed is not rows_input:
                base_input = base_input.index_copy(0, index, changed.to(x.dtype))
        result = self.base_layer(base_input, *args, **kwargs)
        for name, index in groups.items():
            group = self.adapter_output(name, x[index], result[index], *args, **kwargs)
            result = result.index_copy(0, index, group.to(result.dtype))
        return result


class Tuner(ABC):
    """One PEFT method: its config schema, its state-dict prefix, and how to wrap a module."""

    config_class: ClassVar[type[BaseTunerConfig]]
    #: Every adapter container's attribute name starts with this (``"lora_"``).
    prefix: ClassVar[str]
    #: ``target_modules`` a config without them gets, by the transformers ``model_type`` of the
    #: model (``{"llama": ("k_proj", "v_proj", "down_proj")}``; a string is a regex), as PEFT's
    #: per-method tables; a model type missing here makes ``target_modules`` required. Since API 1.4.
    default_target_modules: ClassVar[Mapping[str, Sequence[str] | str]] = {}
    #: Config fields ``kcore finetune`` sets before the user's options, where the config's own
    #: default suits a library call but not a training run from the command line (LoRA:
    #: ``{"target_modules": "all-linear"}``, since ``LoraConfig`` targets nothing by default).
    #: Shown by ``kcore finetune --method M --show-config``. Since API 1.4 (additive).
    finetune_defaults: ClassVar[Mapping[str, Any]] = {}

    @abstractmethod
    def can_wrap(self, module: nn.Module) -> bool:
        """Whether this method can adapt ``module`` (e.g. Linear and Embedding for LoRA)."""

    @abstractmethod
    def wrap(self, module: nn.Module, adapter_name: str, config: BaseTunerConfig) -> TunerLayer:
        """Return a :class:`TunerLayer` around ``module`` holding the adapter ``adapter_name``.

        ``config`` is already the one this module gets (:meth:`BaseTunerConfig.for_module`). Only
        the adapter's parameters (in containers named with :attr:`prefix`) require grad. A
        ``ValueError`` refuses the module, as in :meth:`TunerLayer.update_layer`.
        """

    def trained_base_parameters(self, config: BaseTunerConfig, model: nn.Module, wrapped: Sequence[str]) -> list[str]:
        """Names (in ``model``) of base parameters this method trains and saves with the
        adapter, e.g. LoRA's ``bias="all"``; ``wrapped`` names the wrapped modules."""
        return []

    def before_inject(self, model: Any, adapter_name: str, config: BaseTunerConfig) -> BaseTunerConfig:
        """Called when adapter ``adapter_name`` is added to ``model`` (the
        :class:`kernel_core.peft.PeftModel`), before any module is wrapped, with its config
        (``target_modules`` already resolved from :attr:`default_target_modules`); returns the
        config to use, which is also the one saved. Fill method-specific defaults here (IA3's
        ``feedforward_modules`` by model type), or create state shared by every layer (VeRA's
        projections: a prefix-named container on ``model.base_model``, keyed by adapter name,
        which is then saved, loaded and deleted with the adapter; a parameter there that
        requires grad once the adapter is injected, such as VB-LoRA's vector bank, then trains
        while its adapter is active and not loaded for inference, as the layers' parameters do,
        and a frozen one stays frozen). Since API 1.4."""
        return config

    def after_inject(self, model: Any, adapter_name: str, config: BaseTunerConfig, wrapped: Sequence[str]) -> None:
        """Called once every target of ``adapter_name`` is wrapped (``wrapped`` names them, in
        model order) and before its tensors are loaded from a file: whole-model bookkeeping, such
        as AdaLoRA's rank budget over all layers. Since API 1.4."""

    def on_optimizer_step(self, model: Any, adapter_name: str, step: int) -> None:
        """Called while ``adapter_name`` trains, after each optimizer step and before the gradients
        are cleared (``step`` counts optimizer steps from 1): a method whose adapter changes as it
        trains (AdaLoRA's rank allocation) acts here. ``model`` is the
        :class:`kernel_core.peft.PeftModel`. ``kcore finetune`` calls it, and so does any
        ``Trainer`` given :class:`kernel_core.finetune.callbacks.TunerTrainingCallback`. Since API 1.2."""

    def training_loss(self, model: Any, adapter_name: str) -> torch.Tensor | None:
        """A term the method adds to the loss while ``adapter_name`` trains and the forward is
        given labels (AdaLoRA's orthogonality regulariser), or ``None``. Since API 1.2."""
        return None

    def adapter_file_tensors(self, model: Any, adapter_name: str, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The tensors :meth:`kernel_core.peft.PeftModel.save_pretrained` writes for
        ``adapter_name``, given the adapter's tensors by file key (``base_model.model.<module>.
        <container>``); the default writes them as they are. A method whose file holds a
        different shape than its training layers (AdaLoRA keeps only the ranks its rank pattern
        kept) returns them reshaped here; loading builds the layers at the file's shapes from the
        saved config. Since API 1.4 (additive)."""
        return dict(tensors)

    def adapter_tensors_from_file(self, model: Any, adapter_name: str, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The inverse of :meth:`adapter_file_tensors`: given a file's tensors by key, the tensors
        to load into ``adapter_name`` (already added to ``model``, the
        :class:`kernel_core.peft.PeftModel`, with its config in ``model.peft_config``), which are
        then checked against the model's shapes; the default loads them as they are. A method
        whose file holds another form than its layers overrides it (VB-LoRA's
        ``save_only_topk_weights`` files hold each logits tensor's top-k indices and weights,
        turned back into logits here, as PEFT does). A ``ValueError`` raised here refuses the
        file; the core names the folder. Since API 1.4 (additive)."""
        return dict(tensors)

    def default_targets(self, model: nn.Module) -> Sequence[str] | str | None:
        """``target_modules`` for a config without them, when they depend on ``model`` (the
        transformers model) itself rather than its type: trainable tokens target the model's
        input embedding, whatever it is named, as PEFT. None (the default) looks the model type
        up in :attr:`default_target_modules`. Since API 1.4 (additive)."""
        return None

    def model_inputs(self, model: Any, adapter_name: str, inputs: dict[str, Any], rows: Sequence[str] | None = None) -> dict[str, Any]:
        """The keyword arguments of the transformers model's forward (``input_ids``,
        ``attention_mask``, ``labels``, ...) with active adapter ``adapter_name``'s effect on
        what the model reads; ``model`` is the :class:`kernel_core.peft.PeftModel`, ``rows`` the
        forward's ``adapter_names`` (None: every row is the active adapters'). The default
        leaves them unchanged; prompt learning (:mod:`kernel_core.contracts.prompt`) puts its
        virtual tokens or its per-layer keys and values in. Not called while adapters are
        disabled. Since API 1.4 (additive)."""
        return inputs

    def generation_inputs(self, model: Any, adapter_name: str, inputs: dict[str, Any], rows: Sequence[str] | None = None) -> dict[str, Any]:
        """As :meth:`model_inputs`, for one step of ``PeftModel.generate``: ``inputs`` is what
        the transformers model's ``prepare_inputs_for_generation`` returned for the step (the
        first step has an empty cache or none). Since API 1.4 (additive)."""
        return inputs

    def add_weighted_adapter(self, model: Any, adapters: Sequence[str], weights: Sequence[float], adapter_name: str, **options: Any) -> None:
        """Add ``adapter_name`` to ``model`` (a :class:`kernel_core.peft.PeftModel`) as a weighted
        combination of existing adapters; methods that can combine adapters override this."""
        raise NotImplementedError(f"{type(self).__name__} cannot combine adapters")


class SingleLayerTuner(Tuner):
    """A tuner that wraps every module it adapts in the same layer class, as most PEFT methods do:
    set :attr:`layer_class` and :attr:`module_types` instead of writing :meth:`can_wrap` and
    :meth:`wrap`. ``wrap`` refuses a module :meth:`can_wrap` declines and a config that is not a
    :attr:`config_class` (``TypeError``), then builds ``layer_class(module, adapter_name,
    config)``. A method whose test is more than the module's type overrides ``can_wrap`` (HRA
    takes only square-kernel Conv2d); one with a layer class per module type (LoRA's Embedding
    and Linear) subclasses :class:`Tuner` instead. Since API 1.4 (additive)."""

    #: The layer around each adapted module, called as ``layer_class(module, adapter_name, config)``.
    layer_class: ClassVar[Callable[[Any, str, Any], TunerLayer]]
    #: The module types the default :meth:`can_wrap` accepts (``(nn.Linear, Conv1D)``).
    module_types: ClassVar[tuple[type[nn.Module], ...]] = ()

    def can_wrap(self, module: nn.Module) -> bool:
        return isinstance(module, self.module_types)

    def wrap(self, module: nn.Module, adapter_name: str, config: BaseTunerConfig) -> TunerLayer:
        if not self.can_wrap(module):
            raise TypeError(f"{type(self).__name__} cannot adapt this {type(module).__name__}: can_wrap declines it")
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        return self.layer_class(module, adapter_name, config)


def bias_parameters(model: nn.Module, wrapped: Sequence[str], bias: str) -> list[str]:
    """PEFT's ``bias`` option, what a method with one returns from
    :meth:`Tuner.trained_base_parameters`: ``"none"`` trains no base parameter, ``"all"`` every
    bias of ``model``, and the method's ``"<method>_only"`` (``"lora_only"``, ``"MiSS_only"``)
    the biases of the wrapped modules named in ``wrapped``. Since API 1.4 (additive)."""
    names = [name for name, _ in model.named_parameters() if name.rsplit(".", 1)[-1] == "bias"]
    if bias == "all":
        return names
    if bias.endswith("_only"):
        return [name for name in names if name.rsplit(".", 2)[0] in wrapped and ".base_layer." in name]
    if bias != "none":
        raise ValueError(f'bias={bias!r}: PEFT\'s bias option is "none", "all" or "<method>_only"')
    return []
