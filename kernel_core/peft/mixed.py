"""``PeftMixedModel``: adapters of several PEFT methods on one model, as PEFT's mixed model.

Methods that allow it declare the ``"mixed-model"`` capability in their :class:`TunerSpec`
(PEFT allows LoRA, LoHa, LoKr, AdaLoRA, OFT and SHiRA; not IA3 or LayerNorm tuning). On a
module, a new adapter joins the outermost layer when that layer is its method's; otherwise its
method's new layer wraps the stack (``q_proj.base_layer`` is then the inner layer), as PEFT
stacks them, so on a module each active adapter acts in turn, the earliest added innermost.
Nothing here knows any method: the stack is built, switched, disabled, merged and unloaded
through the tuner-layer contract alone. A layer's method, and an adapter's tensors, are known
by the adapter's name (unique in the model), never by container prefixes alone, so methods
whose prefixes overlap (AdaLoRA uses LoRA's ``lora_``) share a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kernel_core.errors import InvalidAdapterConfigError
from kernel_core.peft.config import Method
from kernel_core.peft.model import PeftModel

#: The :attr:`TunerSpec.capabilities` flag of a method whose layers may wrap, and be wrapped
#: by, another method's layer: its forward runs its ``base_layer`` for the base output and its
#: merge folds into ``base_layer``'s weights in place.
MIXED_CAPABILITY = "mixed-model"


class PeftMixedModel(PeftModel):
    """A :class:`PeftModel` whose adapters may be of different methods, several active at once."""

    def _check_method(self, adapter_name: str, method: Method) -> None:
        if MIXED_CAPABILITY not in method.spec.capabilities:
            raise InvalidAdapterConfigError(
                f"adapter {adapter_name!r} is {method.spec.name}, which does not declare the {MIXED_CAPABILITY!r} "
                "capability: it cannot be mixed with other methods (as in PEFT); use a PeftModel for it"
            )

    def set_adapter(self, adapter_name: str | Sequence[str]) -> None:  # type: ignore[override]
        """Make these adapters active (a name or a list), whatever their methods; on a module
        they act in the order they were added, not the order given (as in PEFT)."""
        names = [adapter_name] if isinstance(adapter_name, str) else list(dict.fromkeys(adapter_name))
        if not names:
            raise ValueError("set_adapter needs at least one adapter name")
        self._activate(names)
        self.active_adapter = names[0] if len(names) == 1 else names  # type: ignore[assignment]

    @property
    def active_adapters(self) -> list[str]:
        active = self.active_adapter
        return [active] if isinstance(active, str) else list(active)

    def _keep_active(self, added: str) -> None:
        self.set_adapter([name for name in self.active_adapters if name in self.peft_config] or [added])

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove an adapter; the other active ones stay active (the first adapter left, if none)."""
        remaining = [name for name in self.active_adapters if name != adapter_name]
        super().delete_adapter(adapter_name)
        if self.peft_config:
            self.set_adapter(remaining or [next(iter(self.peft_config))])

    def add_weighted_adapter(self, adapters: Sequence[str], weights: Sequence[float], adapter_name: str, **options: Any) -> None:
        """As a :class:`PeftModel`, for adapters of one method (there is no combination across methods)."""
        self._check_known(adapters)
        methods = sorted({self._methods[name].spec.name for name in adapters})
        if len(methods) > 1:
            raise ValueError(f"add_weighted_adapter combines adapters of one method; {list(adapters)} are {', '.join(methods)}")
        super().add_weighted_adapter(adapters, weights, adapter_name, **options)
