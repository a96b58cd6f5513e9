"""``PeftModel``: a transformers model with named adapters of any installed PEFT method.

The layout mirrors Hugging Face PEFT (``model.base_model.model`` is the transformers model, and
wrapped layers keep the original under ``base_layer``) so that state-dict names, and therefore
adapter files, are PEFT's.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kernel_core.contracts.tuner import BASE_ADAPTER, BaseTunerConfig, TunerLayer
from kernel_core.errors import AdapterLoadError, InvalidAdapterConfigError
from kernel_core.peft.config import Method, config_from_dict, config_to_dict, method_of
from kernel_core.peft.defaults import resolve_target_modules
from kernel_core.peft.injection import all_tuner_layers, inject, innermost, layer_stack, replace, tuner_layers
from kernel_core.peft.modules_to_save import ModulesToSaveWrapper
from kernel_core.peft.state_dict import adapter_tensors, load_adapter_tensors, read_adapter, write_adapter

DEFAULT_ADAPTER = "default"
BASE_PREFIX = "base_model.model."


class AdaptedModel(nn.Module):
    """Holds the transformers model as ``model`` (PEFT's ``LoraModel`` and friends play this
    part); attribute lookups it lacks go to the model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":
                raise
            return getattr(self.model, name)


class _ForwardWithModelSignature:
    """``PeftModel.forward`` showing the wrapped model's parameters (plus ``adapter_names``), so
    tools that read the signature, like transformers' ``Trainer`` choosing dataset columns, see
    the real inputs rather than ``*args, **kwargs``. On the class, where no model is known yet, it
    shows ``labels`` too: ``Trainer`` reads the class's signature to find the label columns, without
    which it would measure no eval loss."""

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function
        functools.update_wrapper(self, function)
        self.unbound = functools.wraps(function)(lambda *args, **kwargs: function(*args, **kwargs))
        signature = inspect.signature(function)
        labels = inspect.Parameter("labels", inspect.Parameter.KEYWORD_ONLY, default=None)
        parameters = list(signature.parameters.values())
        self.unbound.__signature__ = signature.replace(parameters=[*parameters[:-1], labels, parameters[-1]])  # type: ignore[attr-defined]

    def __get__(self, instance: PeftModel | None, owner: type) -> Callable[..., Any]:
        if instance is None:
            return self.unbound
        bound = functools.partial(self.function, instance)
        bound.__signature__ = instance._forward_signature()  # type: ignore[attr-defined]
        return bound


class PeftModel(nn.Module):
    """A model with adapters: add, switch, disable, merge, combine, save and load them."""

    def __init__(self, model: nn.Module, config: BaseTunerConfig, adapter_name: str = DEFAULT_ADAPTER) -> None:
        super().__init__()
        model.requires_grad_(False)
        self.base_model = AdaptedModel(model)
        self.peft_config: dict[str, BaseTunerConfig] = {}
        self._methods: dict[str, Method] = {}
        self._trained_base: dict[str, list[str]] = {}
        self._trained_shared: dict[str, list[str]] = {}
        self.active_adapter = adapter_name
        self._adapters_disabled = False
        self.add_adapter(adapter_name, config)
        self.set_adapter(adapter_name)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            return getattr(self.base_model, name)

    @property
    def model(self) -> nn.Module:
        """The transformers model, with wrapped layers."""
        return self.base_model.model

    def get_base_model(self) -> nn.Module:
        """The transformers model with the adapter layers in it (PEFT's name for :attr:`model`).

        Training it trains the adapter: hand it to a trainer that takes only transformers models,
        such as TRL's ``SFTTrainer``, which treats any model that is not ``peft``'s own as one and
        patches its forward (see docs/peft.md)."""
        return self.model

    # -- adapters ----------------------------------------------------------------------------

    def add_adapter(self, adapter_name: str, config: BaseTunerConfig) -> None:
        """Add a new adapter (inactive unless it is the first); every adapter of one model uses
        the same method."""
        if adapter_name in self.peft_config:
            raise ValueError(f"adapter {adapter_name!r} already exists; delete_adapter() it first or pick another name")
        if adapter_name == BASE_ADAPTER or not adapter_name or "." in adapter_name:
            raise ValueError(f"{adapter_name!r} cannot name an adapter (reserved, empty or dotted)")
        method = method_of(config)
        self._check_method(adapter_name, method)
        config = config.model_copy(update={"base_model_name_or_path": config.base_model_name_or_path or self._model_name()})
        config = resolve_target_modules(config, method.tuner, method.spec.name, self.model)
        config = method.tuner.before_inject(self, adapter_name, config)
        if type(config) is not method.config_class:
            raise TypeError(f"{type(method.tuner).__name__}.before_inject returned {type(config).__name__}, not {method.config_class.__name__}")
        try:
            wrapped = inject(self.model, adapter_name, config, method, {name: m.spec.name for name, m in self._methods.items()})
            method.tuner.after_inject(self, adapter_name, config, wrapped)
        except BaseException:  # a refused adapter (a module the method cannot take) leaves the model as it was
            self._remove_from_model(adapter_name, method)
            raise
        self.peft_config[adapter_name] = config
        self._methods[adapter_name] = method
        self._trained_base[adapter_name] = method.tuner.trained_base_parameters(config, self.model, wrapped)
        # shared parameters the method made trainable train with their adapter; frozen ones stay frozen
        self._trained_shared[adapter_name] = [name for name, p in self._shared_parameters(adapter_name).items() if p.requires_grad]
        self._keep_active(adapter_name)

    def _keep_active(self, added: str) -> None:
        """After ``added`` is added: the active adapter stays active (``added`` if there is none)."""
        self.set_adapter(self.active_adapter if self.active_adapter in self.peft_config else added)

    def _check_method(self, adapter_name: str, method: Method) -> None:
        """Every adapter of one model uses the same method (:class:`kernel_core.peft.PeftMixedModel` mixes them)."""
        others = {m.spec.name for m in self._methods.values()}
        if others and method.spec.name not in others:
            raise InvalidAdapterConfigError(
                f"adapter {adapter_name!r} is {method.spec.name} but this model holds {', '.join(sorted(others))} "
                "adapters; one method per model (get_peft_model(..., mixed=True) mixes methods that allow it)"
            )

    def set_adapter(self, adapter_name: str) -> None:
        """Make ``adapter_name`` the active adapter; only its parameters train."""
        self._activate([adapter_name])
        self.active_adapter = adapter_name

    def _activate(self, adapter_names: Sequence[str]) -> None:
        """Make these adapters active in every layer; only their parameters train."""
        self._check_known(adapter_names)
        for layer in all_tuner_layers(self.model):
            layer.set_adapter(adapter_names)
        trained = {name: not self.peft_config[adapter].inference_mode for adapter in adapter_names for name in self._trained_base.get(adapter, ())}
        inference = all(self.peft_config[adapter].inference_mode for adapter in adapter_names)
        for name, parameter in self.model.named_parameters():
            if name in trained:
                parameter.requires_grad_(trained[name])
            elif inference and parameter.requires_grad:
                parameter.requires_grad_(False)
        for adapter, names in self._trained_shared.items():
            shared = self._shared_parameters(adapter)
            for name in names:
                shared[name].requires_grad_(adapter in adapter_names and not self.peft_config[adapter].inference_mode)

    @property
    def active_adapters(self) -> list[str]:
        return [self.active_adapter]

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove an adapter; when it was active, another remaining one becomes active."""
        self._check_known([adapter_name])
        self._remove_from_model(adapter_name, self._methods[adapter_name])
        del self.peft_config[adapter_name], self._methods[adapter_name], self._trained_base[adapter_name], self._trained_shared[adapter_name]
        if self.active_adapter == adapter_name and self.peft_config:
            self.set_adapter(next(iter(self.peft_config)))

    def _remove_from_model(self, adapter_name: str, method: Method) -> None:
        """Take ``adapter_name`` out of every layer (unwrapping layers it leaves empty) and out of
        its method's containers on :attr:`base_model`; the bookkeeping is the caller's."""
        for name, outer in list(tuner_layers(self.model)):
            kept = []
            for layer in layer_stack(outer):
                if adapter_name in layer.adapter_names:
                    layer.delete_adapter(adapter_name)
                if layer.adapter_names:
                    kept.append(layer)
            for layer, inner in zip(kept, kept[1:] + [innermost(outer)]):  # drop emptied layers from the stack
                layer.base_layer = inner
            replace(self.model, name, kept[0] if kept else innermost(outer))
        for container in self._shared_containers(adapter_name, method):
            del container[adapter_name]

    def _shared_containers(self, adapter_name: str, method: Method) -> list[Any]:
        """Containers of ``adapter_name``'s method on :attr:`base_model` (state it keeps once per
        model, see :meth:`kernel_core.contracts.tuner.Tuner.before_inject`) that hold the adapter."""
        prefix = method.tuner.prefix
        return [
            child
            for name, child in self.base_model.named_children()
            if name.startswith(prefix) and hasattr(child, "__delitem__") and adapter_name in child
        ]

    def _shared_parameters(self, adapter_name: str) -> dict[str, nn.Parameter]:
        """``adapter_name``'s parameters that its method keeps once per model, in containers on
        :attr:`base_model`, by name there (``vblora_vector_bank.default``)."""
        return {
            f"{container}.{key}": parameter
            for container, child in self.base_model.named_children()
            if container != "model"
            for key, parameter in child.named_parameters()
            if key.split(".")[0] == adapter_name
        }

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Within this block the model computes as the base model (merged adapters are unmerged)."""
        layers = list(all_tuner_layers(self.model))
        for layer in layers:
            layer.disable_adapters = True
        self._adapters_disabled = True
        try:
            yield
        finally:
            self._adapters_disabled = False
            for layer in layers:
                layer.disable_adapters = False

    def merge_adapter(self, adapter_names: Sequence[str] | None = None) -> None:
        """Fold the given (default: active) adapters into the base weights, keeping them
        unmergeable."""
        names = list(adapter_names or self.active_adapters)
        self._check_known(names)
        unmergeable = [name for name in names if self.peft_config[name].target_modules == []]
        if unmergeable:
            raise ValueError(f"adapter(s) {unmergeable} wrap no module (they change what the model reads): nothing to merge")
        for layer in all_tuner_layers(self.model):
            layer.merge(names)

    def unmerge_adapter(self) -> None:
        """Restore the base weights from before :meth:`merge_adapter`."""
        for layer in reversed(list(all_tuner_layers(self.model))):
            layer.unmerge()

    def merge_and_unload(self, adapter_names: Sequence[str] | None = None) -> nn.Module:
        """Fold the given (default: active) adapters into the base weights and return the plain
        transformers model; a ``modules_to_save`` module becomes their trained copy."""
        names = list(adapter_names or self.active_adapters)
        self.merge_adapter(names)
        return self._unload(names)

    def unload(self) -> nn.Module:
        """Return the plain transformers model without the adapters, their updates not folded in:
        the base model as loaded, ``modules_to_save`` modules included (as peft 0.22's ``unload``)."""
        self.unmerge_adapter()
        return self._unload()

    def _unload(self, merged_adapters: Sequence[str] = ()) -> nn.Module:
        for name, layer in list(tuner_layers(self.model)):
            if isinstance(layer, ModulesToSaveWrapper):
                replace(self.model, name, layer.unloaded(merged_adapters))
            else:
                replace(self.model, name, innermost(layer))
        return self.model

    def add_weighted_adapter(self, adapters: Sequence[str], weights: Sequence[float], adapter_name: str, **options: Any) -> None:
        """Add ``adapter_name`` as a weighted combination of ``adapters``, as the method defines
        it (LoRA: ``combination_type`` linear, cat or svd)."""
        self._check_known(adapters)
        if len(adapters) != len(weights) or not adapters:
            raise ValueError(f"give one weight per adapter: {len(adapters)} adapters, {len(weights)} weights")
        self._methods[adapters[0]].tuner.add_weighted_adapter(self, list(adapters), list(weights), adapter_name, **options)

    def _check_known(self, adapter_names: Sequence[str]) -> None:
        unknown = [name for name in adapter_names if name not in self.peft_config]
        if unknown:
            raise ValueError(f"unknown adapter(s) {unknown}; this model has {sorted(self.peft_config)}")

    # -- forward -----------------------------------------------------------------------------

    @_ForwardWithModelSignature
    def forward(self, *args: Any, adapter_names: Sequence[str] | None = None, **kwargs: Any) -> Any:
        """The transformers model's forward; ``adapter_names`` gives one adapter (or
        ``"__base__"``) per row, computed as one batch per adapter group."""
        with self._rows(adapter_names):
            if args:  # the input hooks see every input by name
                kwargs = self._named_inputs(args, kwargs)
            output = self.model(**self._adapter_inputs("model_inputs", kwargs, adapter_names))
        if self.training and kwargs.get("labels") is not None and getattr(output, "loss", None) is not None:
            terms = [term for term in map(self._training_loss, self.active_adapters) if term is not None]
            if terms:
                output.loss = output.loss + sum(terms)
        return output

    def _named_inputs(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Positional inputs by their names in the model's forward, with the keyword ones."""
        signature = self._forward_signature()
        bound = signature.bind_partial(*args, **kwargs).arguments
        rest = [p.name for p in signature.parameters.values() if p.kind is p.VAR_KEYWORD]
        return {**{k: v for k, v in bound.items() if k not in rest}, **(bound.get(rest[0], {}) if rest else {})}

    def _adapter_inputs(self, hook: str, inputs: dict[str, Any], rows: Sequence[str] | None) -> dict[str, Any]:
        """``inputs`` through each adapter's input hook (:meth:`Tuner.model_inputs` or
        :meth:`Tuner.generation_inputs`): the active adapters', or those ``rows`` name."""
        if self._adapters_disabled:
            return inputs
        names = self.active_adapters if rows is None else [name for name in dict.fromkeys(rows) if name != BASE_ADAPTER]
        for name in names:
            inputs = getattr(self._methods[name].tuner, hook)(self, name, inputs, rows)
        return inputs

    def _training_loss(self, adapter_name: str) -> torch.Tensor | None:
        return self._methods[adapter_name].tuner.training_loss(self, adapter_name)

    def on_optimizer_step(self, step: int) -> None:
        """Run each training adapter's tuner hook after optimizer step ``step`` (see
        :meth:`kernel_core.contracts.tuner.Tuner.on_optimizer_step`); training loops call this,
        ``Trainer`` through :class:`kernel_core.finetune.callbacks.TunerTrainingCallback`."""
        for name in self.active_adapters:
            if not self.peft_config[name].inference_mode:
                self._methods[name].tuner.on_optimizer_step(self, name, step)

    def _forward_signature(self) -> inspect.Signature:
        """Computed once per model: ``forward`` is looked up on every call, token by token."""
        cached = self.__dict__.get("_cached_forward_signature")
        if cached is None:
            signature = inspect.signature(self.model.forward)
            parameters = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
            extra = inspect.Parameter("adapter_names", inspect.Parameter.KEYWORD_ONLY, default=None)
            rest = [p for p in signature.parameters.values() if p.kind is p.VAR_KEYWORD]
            cached = self.__dict__["_cached_forward_signature"] = signature.replace(parameters=[*parameters, extra, *rest])
        return cached

    def generate(self, *args: Any, adapter_names: Sequence[str] | None = None, **kwargs: Any) -> Any:
        """The transformers model's ``generate``, with per-row adapters like :meth:`forward`."""
        if adapter_names is not None:
            copies = kwargs.get("num_return_sequences", 1) * max(kwargs.get("num_beams", 1), 1)
            adapter_names = [name for name in adapter_names for _ in range(copies)]
        own = self.model.__dict__.get("prepare_inputs_for_generation")
        prepare = self.model.prepare_inputs_for_generation
        rows = adapter_names

        @functools.wraps(prepare)  # generate checks its inputs against this signature
        def prepare_step(*args: Any, **kwargs: Any) -> dict[str, Any]:
            return self._adapter_inputs("generation_inputs", prepare(*args, **kwargs), rows)

        self.model.prepare_inputs_for_generation = prepare_step  # as peft does: each step's inputs pass the hooks
        try:
            with self._rows(adapter_names):
                return self.model.generate(*args, **kwargs)
        finally:
            if own is None:
                del self.model.prepare_inputs_for_generation
            else:
                self.model.prepare_inputs_for_generation = own

    @contextlib.contextmanager
    def _rows(self, adapter_names: Sequence[str] | None) -> Iterator[None]:
        if adapter_names is None:
            yield
            return
        self._check_known([name for name in adapter_names if name != BASE_ADAPTER])
        layers = list(all_tuner_layers(self.model))
        for layer in layers:
            layer.row_adapters = list(adapter_names)
        try:
            yield
        finally:
            for layer in layers:
                layer.row_adapters = None

    # -- parameters --------------------------------------------------------------------------

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """(trainable, all) parameter counts."""
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return trainable, sum(p.numel() for p in self.parameters())

    def print_trainable_parameters(self) -> None:
        trainable, total = self.get_nb_trainable_parameters()
        print(f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}")

    # -- files -------------------------------------------------------------------------------

    def save_pretrained(self, save_directory: str | Path, selected_adapters: Sequence[str] | None = None) -> None:
        """Write each adapter in PEFT's format: ``default`` in ``save_directory``, any other
        in a subfolder named after it (as PEFT does)."""
        names = list(selected_adapters or self.peft_config)
        self._check_known(names)
        root = Path(save_directory)
        for name in names:
            method = self._methods[name]
            config = config_to_dict(self.peft_config[name].model_copy(update={"inference_mode": True}))
            base_keys = [BASE_PREFIX + key for key in self._trained_base[name]]
            tensors = method.tuner.adapter_file_tensors(self, name, adapter_tensors(self, name, method.tuner.prefix, base_keys))
            write_adapter(root if name == DEFAULT_ADAPTER else root / name, config, tensors)

    @classmethod
    def from_pretrained(
        cls, model: nn.Module, model_id: str | Path, adapter_name: str = DEFAULT_ADAPTER, is_trainable: bool = False
    ) -> PeftModel:
        """Wrap ``model`` with the PEFT-format adapter in folder ``model_id``; unless
        ``is_trainable``, nothing trains and the model is put in eval mode (as PEFT does)."""
        config_dict, tensors = read_adapter(model_id)
        config = config_from_dict(config_dict).model_copy(update={"inference_mode": not is_trainable})
        peft_model = cls(model, config, adapter_name)
        try:
            peft_model._load_tensors(adapter_name, tensors, str(model_id))
        except Exception:
            peft_model.unload()  # hand the caller's model back as it was
            raise
        return peft_model if is_trainable else peft_model.eval()

    def load_adapter(self, model_id: str | Path, adapter_name: str, is_trainable: bool = False) -> None:
        """Add the adapter in folder ``model_id`` under ``adapter_name`` (not made active)."""
        config_dict, tensors = read_adapter(model_id)
        config = config_from_dict(config_dict).model_copy(update={"inference_mode": not is_trainable})
        self.add_adapter(adapter_name, config)
        try:
            self._load_tensors(adapter_name, tensors, str(model_id))
        except Exception:
            self.delete_adapter(adapter_name)
            raise

    def _load_tensors(self, adapter_name: str, tensors: dict[str, torch.Tensor], source: str) -> None:
        tuner = self._methods[adapter_name].tuner
        try:
            tensors = tuner.adapter_tensors_from_file(self, adapter_name, tensors)
        except ValueError as exc:
            raise AdapterLoadError(f"cannot load adapter {adapter_name!r} from {source}: {exc}") from None
        load_adapter_tensors(self, adapter_name, tuner.prefix, tensors, source)

    def _model_name(self) -> str | None:
        config = getattr(self.model, "config", None)
        return getattr(config, "_name_or_path", None) or None


def get_peft_model(model: nn.Module, config: BaseTunerConfig, adapter_name: str = DEFAULT_ADAPTER, mixed: bool = False) -> PeftModel:
    """Wrap ``model`` (any transformers ``PreTrainedModel``) with a new, trainable adapter;
    ``mixed=True`` gives a :class:`kernel_core.peft.PeftMixedModel`, which also takes adapters of
    other methods (as PEFT's ``get_peft_model(..., mixed=True)``)."""
    if mixed:
        from kernel_core.peft.mixed import PeftMixedModel  # it subclasses PeftModel

        return PeftMixedModel(model, config, adapter_name)
    return PeftModel(model, config, adapter_name)
