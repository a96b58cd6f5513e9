"""Putting one adapter into a model: wrap its target modules with the method's layers, add
``modules_to_save`` copies, and say which base parameters it trains."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

from torch import nn
from transformers.pytorch_utils import Conv1D

from kernel_core.contracts.tuner import BaseTunerConfig, TunerLayer
from kernel_core.errors import InvalidAdapterConfigError
from kernel_core.peft.config import Method
from kernel_core.peft.modules_to_save import ModulesToSaveWrapper
from kernel_core.peft.targets import select_targets

#: What ``"all-linear"`` counts as linear: torch's Linear and the transposed Conv1D of GPT-2.
LINEAR_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, Conv1D)


def inject(model: nn.Module, adapter_name: str, config: BaseTunerConfig, method: Method, methods: Mapping[str, str]) -> list[str]:
    """Wrap (or extend) every target module of ``model`` with adapter ``adapter_name``
    (``methods``: the method name of each adapter the model already holds); returns
    the names of the modules the method wraps (none for ``target_modules=[]``: a method that
    changes what the model reads, such as prompt learning, wraps nothing)."""
    if config.target_modules == []:
        return []
    if config.target_modules is None:
        raise InvalidAdapterConfigError(
            f"{type(config).__name__}.target_modules is required: a list of module names, a regex, or 'all-linear'"
        )
    modules_to_save = getattr(config, "modules_to_save", None)  # the optional fields: a method's
    targets = select_targets(  # config has them only when its PEFT config does
        model,
        config.target_modules,
        exclude_modules=getattr(config, "exclude_modules", None),
        layers_to_transform=getattr(config, "layers_to_transform", None),
        layers_pattern=getattr(config, "layers_pattern", None),
        linear_types=LINEAR_TYPES,
    )
    targets = [name for name in targets if not _inside_modules_to_save(name, modules_to_save)]
    for name in targets:
        module = model.get_submodule(name)
        module_config = config.for_module(name)
        own = _own_layer(module, method, methods)
        if own is None and not method.tuner.can_wrap(innermost(module)):
            raise InvalidAdapterConfigError(
                f"{method.spec.name} cannot adapt module {name!r} of type {type(module).__name__}; "
                "narrow target_modules"
            )
        try:
            if own is not None:
                own.update_layer(adapter_name, module_config)
            else:
                replace(model, name, _stacked(method.tuner.wrap(innermost(module), adapter_name, module_config), module))
        except ValueError as exc:  # the method refuses this module's shape: say which module
            if isinstance(exc, InvalidAdapterConfigError):
                raise
            raise InvalidAdapterConfigError(f"{method.spec.name} cannot adapt module {name!r}: {exc}") from exc
        model.get_submodule(name).train(module.training)  # new dropout follows the model's mode
    for name in _modules_to_save(model, modules_to_save):
        module = model.get_submodule(name)
        if isinstance(module, ModulesToSaveWrapper):
            module.update_layer(adapter_name, config)
        else:
            replace(model, name, ModulesToSaveWrapper(module, adapter_name))
        model.get_submodule(name).train(module.training)
    return targets


def _inside_modules_to_save(name: str, modules_to_save: Sequence[str] | None) -> bool:
    return any(name == entry or name.endswith("." + entry) or f".{entry}." in f".{name}." for entry in modules_to_save or ())


def _modules_to_save(model: nn.Module, modules_to_save: Sequence[str] | None) -> list[str]:
    names = [
        name
        for name, module in model.named_modules()
        if name and any(name == entry or name.endswith("." + entry) for entry in modules_to_save or ())
        and not _is_part_of_wrapper(model, name)
    ]
    missing = [entry for entry in modules_to_save or () if not any(n == entry or n.endswith("." + entry) for n in names)]
    if missing:
        raise InvalidAdapterConfigError(f"modules_to_save {missing} matched no module of {type(model).__name__}")
    return names


def _is_part_of_wrapper(model: nn.Module, name: str) -> bool:
    """Whether ``name`` lies inside a wrapper's copies (which are never wrapped again)."""
    parts = name.split(".")
    return any(isinstance(model.get_submodule(".".join(parts[:i])), TunerLayer) for i in range(1, len(parts)))


def replace(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at dotted path ``name`` of ``model``."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, module)


def _own_layer(module: nn.Module, method: Method, methods: Mapping[str, str]) -> TunerLayer | None:
    """``module`` when it is a layer of ``method``, else None. As in PEFT, a new adapter joins
    the outermost layer of a stack when that layer is its method's, and otherwise a new layer
    wraps the stack (OFT, LoRA, OFT on one module is three layers: the second OFT rotates what
    LoRA's layer sees). A layer's method is its adapters' (``methods``), never read from its
    container names, so methods whose prefixes overlap (AdaLoRA uses LoRA's ``lora_``) stack."""
    if isinstance(module, TunerLayer) and not isinstance(module, ModulesToSaveWrapper):
        if any(methods.get(name) == method.spec.name for name in module.adapter_names):
            return module
    return None


def _stacked(layer: TunerLayer, module: nn.Module) -> TunerLayer:
    """``layer`` (built around the innermost module) on top of ``module``: when ``module`` is
    another method's layer (a mixed model) the new layer wraps it, as PEFT stacks them."""
    if module is not layer.base_layer:
        layer.base_layer = module
    return layer


def layer_stack(layer: nn.Module) -> list[TunerLayer]:
    """The tuner layers wrapped one in another from ``layer`` down, outermost first (one layer
    except in a mixed model)."""
    stack = []
    while isinstance(layer, TunerLayer):
        stack.append(layer)
        layer = layer.base_layer
    return stack


def innermost(module: nn.Module) -> nn.Module:
    """The module under every tuner layer of ``module`` (``module`` itself when it is none)."""
    while isinstance(module, TunerLayer):
        module = module.base_layer
    return module


def all_tuner_layers(model: nn.Module) -> Iterator[TunerLayer]:
    """Every layer of every stack, innermost first within a stack: the order to merge in (each
    layer's merge folds into the weights its inner layers already changed, as its forward sees
    them); unmerge goes the other way."""
    for _, outer in tuner_layers(model):
        yield from reversed(layer_stack(outer))


def tuner_layers(model: nn.Module) -> Iterator[tuple[str, TunerLayer]]:
    """Every wrapper in ``model`` (method layers and ``modules_to_save`` copies), outermost only."""
    for name, module in model.named_modules():
        if isinstance(module, TunerLayer) and not _is_part_of_wrapper(model, name):
            yield name, module
