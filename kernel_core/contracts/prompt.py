"""Prompt learning: methods that change what the model reads, not its weights (API 1.4, additive).

Prompt tuning and P-tuning put learned virtual-token embeddings before the input's; prefix tuning
puts learned keys and values before every layer's. Such a method wraps no module: its tuner is a
:class:`PromptLearningTuner`, which keeps one prompt encoder per adapter in the ``ModuleDict``
``PeftModel.base_model.prompt_encoder`` (state kept once per model, so it trains, saves, loads and
is deleted with its adapter) and rewrites the keyword arguments of the transformers model's
forward through the :meth:`~kernel_core.contracts.tuner.Tuner.model_inputs` and
:meth:`~kernel_core.contracts.tuner.Tuner.generation_inputs` hooks every tuner has. Two ready
kinds: :class:`VirtualTokensTuner` (embeddings, PEFT's prompt tuning and P-tuning) and
:class:`PastKeyValuesTuner` (per-layer keys and values, PEFT's prefix tuning); a method only
builds its encoder. Another method (multitask prompt tuning, CPT) subclasses one of them and
overrides what differs (the prompts, which may read a ``task_ids`` input, or the labels).

Facts from PEFT's ``PeftModelForCausalLM``: the file holds one tensor, ``prompt_embeddings``,
the encoder's output for the virtual tokens (``(num_virtual_tokens, token_dim)``, or
``(num_virtual_tokens, num_layers * 2 * token_dim)`` for prefix tuning); a model loaded for
inference keeps that table and nothing else. The attention mask gets ``num_virtual_tokens`` ones
in front. Virtual-token embeddings take positions ``0 .. num_virtual_tokens - 1`` (the input's
own ``position_ids`` are dropped, as PEFT drops them) and their logits are returned, with labels
``-100`` there; a prefix's keys and values are the cache's first ``num_virtual_tokens`` entries,
so the input's positions start after them.
"""

from __future__ import annotations

import inspect
import warnings
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any, Literal

import torch
from pydantic import Field, PositiveInt, field_validator
from torch import nn

from kernel_core.contracts.tuner import BaseTunerConfig, Tuner, TunerLayer

#: The ``PeftModel.base_model`` attribute holding each adapter's prompt encoder (PEFT's name).
PROMPT_ENCODER = "prompt_encoder"
#: The one key of a prompt-learning adapter file (PEFT's).
PROMPT_EMBEDDINGS = "prompt_embeddings"


class PromptLearningConfig(BaseTunerConfig):
    """The fields every PEFT prompt-learning config has. ``token_dim``, ``num_layers``,
    ``num_attention_heads`` and ``num_transformer_submodules`` are read from the model when the
    adapter is added (None: not yet), as PEFT fills them, and saved. ``task_type`` is
    ``"CAUSAL_LM"`` (filled in when None: PEFT loads prompt learning only for a task type)."""

    #: Never written (PEFT's prompt-learning configs lack it): the adapter wraps no module.
    target_modules: list[str] | str | None = Field(default=None, exclude=True)
    num_virtual_tokens: PositiveInt = Field(description="How many virtual tokens the prompt has.")
    token_dim: PositiveInt | None = None
    num_transformer_submodules: Literal[1] | None = Field(
        default=None, description="1 for a decoder-only model; encoder-decoder models (2) are not supported."
    )
    num_attention_heads: PositiveInt | None = None
    num_layers: PositiveInt | None = None
    modules_to_save: list[str] | None = Field(default=None, description="Not supported with prompt learning here.")

    @field_validator("modules_to_save")
    @classmethod
    def _no_modules_to_save(cls, value: list[str] | None) -> list[str] | None:
        if value:
            raise ValueError("modules_to_save is not supported with prompt learning here")
        return value

    @field_validator("target_modules")
    @classmethod
    def _wraps_no_module(cls, value: Any) -> Any:
        if value:
            raise ValueError("prompt learning wraps no module: leave target_modules out")
        return value

    @field_validator("task_type")
    @classmethod
    def _causal_lm(cls, value: str | None) -> str | None:
        if value not in (None, "CAUSAL_LM"):
            raise ValueError(f"only task_type 'CAUSAL_LM' (a decoder-only model) is supported, not {value!r}")
        return value


class PromptLearningTuner(Tuner):
    """A method that wraps no module and changes the model's inputs instead; subclasses build
    the encoder (:meth:`build_encoder`) and say what it adds (the two kinds below)."""

    prefix = PROMPT_ENCODER

    def can_wrap(self, module: nn.Module) -> bool:
        return False

    def wrap(self, module: nn.Module, adapter_name: str, config: BaseTunerConfig) -> TunerLayer:
        raise TypeError(f"{type(self).__name__} wraps no module (prompt learning)")

    def default_targets(self, model: nn.Module) -> Sequence[str]:
        return []

    @abstractmethod
    def build_encoder(self, model: Any, adapter_name: str, config: PromptLearningConfig) -> nn.Module:
        """The adapter's prompt encoder, its trained parameters requiring grad (``model`` is the
        :class:`kernel_core.peft.PeftModel`, ``config`` already completed from the model). Its
        ``table()`` method returns the prompt table PEFT saves: ``(num_virtual_tokens, width)``;
        with ``config.inference_mode`` it should hold only that table, as ``embedding.weight``
        of an ``nn.Embedding`` named ``embedding`` (what a file loads into)."""

    def complete_config(self, model: Any, config: PromptLearningConfig) -> PromptLearningConfig:
        """``config`` with the dimensions it left out read from the transformers model's config,
        by PEFT's rules (``num_hidden_layers``, ``hidden_size``, ``num_attention_heads`` or their
        GPT-2 names; an ``encoder_hidden_size`` field left out is ``token_dim``). A method that
        sizes them otherwise (prefix tuning: key/value heads) sets them, then calls this."""
        text = _text_config(model)
        found = {
            "num_layers": _first(text, "num_hidden_layers", "num_layers", "n_layer"),
            "token_dim": _first(text, "hidden_size", "n_embd", "d_model"),
            "num_attention_heads": _first(text, "num_attention_heads", "n_head", "num_heads"),
            "num_transformer_submodules": 1,
            "task_type": "CAUSAL_LM",
        }
        config = config.model_copy(update={k: v for k, v in found.items() if getattr(config, k) is None and v is not None})
        if getattr(config, "encoder_hidden_size", 0) is None:  # PEFT's default for every config with the field
            config = config.model_copy(update={"encoder_hidden_size": config.token_dim})
        return config

    def before_inject(self, model: Any, adapter_name: str, config: BaseTunerConfig) -> BaseTunerConfig:
        assert isinstance(config, PromptLearningConfig)
        config = self.complete_config(model, config)
        missing = [name for name in ("token_dim", "num_layers", "num_attention_heads") if getattr(config, name) is None]
        if missing:
            raise ValueError(f"{type(config).__name__}: set {', '.join(missing)}: the model's config does not say")
        encoders = getattr(model.base_model, PROMPT_ENCODER, None)
        if encoders is None:
            encoders = nn.ModuleDict()
            setattr(model.base_model, PROMPT_ENCODER, encoders)
        device = next(model.model.parameters()).device
        encoders[adapter_name] = self.build_encoder(model, adapter_name, config).to(device)
        return config

    def prompt_table(self, model: Any, adapter_name: str) -> torch.Tensor:
        """The adapter's prompt table, ``(num_virtual_tokens, width)``, in the encoder's dtype."""
        return model.base_model.prompt_encoder[adapter_name].table()

    def adapter_file_tensors(self, model: Any, adapter_name: str, tensors: Any) -> dict[str, torch.Tensor]:
        """PEFT's file: the prompt table alone, whatever encoder computes it, computed without
        grad as an inference forward computes it (an LSTM's grad and no-grad kernels round
        differently), so that the file gives the logits the model gave."""
        with torch.no_grad():
            return {PROMPT_EMBEDDINGS: self.prompt_table(model, adapter_name).contiguous()}

    def adapter_tensors_from_file(self, model: Any, adapter_name: str, tensors: Any) -> dict[str, torch.Tensor]:
        """The file's table goes into the encoder's ``embedding``; an encoder that computes its
        table (P-tuning's MLP, a prefix projection) cannot take it back, so such an adapter
        loads for inference only (PEFT does the same or silently mis-loads)."""
        unexpected = sorted(set(tensors) - {PROMPT_EMBEDDINGS})
        if unexpected or PROMPT_EMBEDDINGS not in tensors:
            raise ValueError(f"a prompt-learning file holds exactly {PROMPT_EMBEDDINGS!r}; this one holds {sorted(tensors)}")
        encoder = model.base_model.prompt_encoder[adapter_name]
        extra = sorted(name for name, _ in encoder.named_parameters() if name != "embedding.weight")
        if extra:
            raise ValueError(
                f"the file holds the prompt table ({PROMPT_EMBEDDINGS}), not the encoder ({', '.join(extra)}) that "
                "computed it: load it for inference (is_trainable=False)"
            )
        table, expected = tensors[PROMPT_EMBEDDINGS], encoder.embedding.weight
        if table.shape != expected.shape:
            config = model.peft_config[adapter_name]
            raise ValueError(
                f"{PROMPT_EMBEDDINGS} has shape {tuple(table.shape)}, but the config (num_virtual_tokens="
                f"{config.num_virtual_tokens}, token_dim={config.token_dim}, num_layers={config.num_layers}) and the "
                f"model make {tuple(expected.shape)}: was it saved for another base model?"
            )
        return {f"base_model.{PROMPT_ENCODER}.embedding.weight": tensors[PROMPT_EMBEDDINGS]}

    @staticmethod
    def _one_adapter(rows: Sequence[str] | None) -> None:
        if rows is not None:
            raise ValueError("prompt-learning adapters serve one adapter per forward (as in PEFT); leave adapter_names out")


class VirtualTokensTuner(PromptLearningTuner):
    """Virtual-token embeddings before the input's (PEFT's prompt tuning and P-tuning): the
    encoder's ``table()`` is ``(num_virtual_tokens, token_dim)``."""

    def prompts(self, model: Any, adapter_name: str, batch_size: int, inputs: dict[str, Any]) -> torch.Tensor:
        """``(batch_size, num_virtual_tokens, token_dim)``: the same prompt for every row.
        Override for prompts that depend on the input (multitask prompt tuning's ``task_ids``,
        popped from ``inputs``)."""
        table = self.prompt_table(model, adapter_name)
        return table.unsqueeze(0).expand(batch_size, -1, -1)

    def model_inputs(self, model: Any, adapter_name: str, inputs: dict[str, Any], rows: Sequence[str] | None = None) -> dict[str, Any]:
        self._one_adapter(rows)
        count = model.peft_config[adapter_name].num_virtual_tokens
        for name in ("position_ids", "token_type_ids"):
            if inputs.get(name) is not None:
                warnings.warn(f"{name} are not supported with virtual tokens (as in PEFT); ignoring them", UserWarning, stacklevel=3)
                inputs[name] = None
        embeds = self._embeds(model, adapter_name, inputs)
        inputs["attention_mask"] = _ones_before(inputs.get("attention_mask"), count)
        labels = inputs.get("labels")
        if labels is not None:
            inputs["labels"] = torch.cat([labels.new_full((labels.shape[0], count), -100), labels], dim=1)
        inputs["inputs_embeds"] = embeds
        return inputs

    def generation_inputs(self, model: Any, adapter_name: str, inputs: dict[str, Any], rows: Sequence[str] | None = None) -> dict[str, Any]:
        """At the first step (an empty or no cache) the input becomes embeddings with the
        prompt; every step the mask gets the prompt's ones and positions come from the cache."""
        self._one_adapter(rows)
        count = model.peft_config[adapter_name].num_virtual_tokens
        inputs.pop("position_ids", None)
        inputs["attention_mask"] = _ones_before(inputs.get("attention_mask"), count)
        if _cache_length(inputs) == 0:
            inputs["inputs_embeds"] = self._embeds(model, adapter_name, inputs)
        return inputs

    def _embeds(self, model: Any, adapter_name: str, inputs: dict[str, Any]) -> torch.Tensor:
        """The prompt, then the input's embeddings (from ``input_ids``, which is then dropped)."""
        embeds = inputs.get("inputs_embeds")
        input_ids = inputs.pop("input_ids", None)
        if embeds is None:
            embeds = model.model.get_input_embeddings()(input_ids)
        prompts = self.prompts(model, adapter_name, embeds.shape[0], inputs)
        inputs["input_ids"] = None
        return torch.cat([prompts.to(embeds.dtype), embeds], dim=1)


class PastKeyValuesTuner(PromptLearningTuner):
    """Learned keys and values before every layer's (PEFT's prefix tuning): the encoder's
    ``table()`` is ``(num_virtual_tokens, num_layers * 2 * token_dim)``, per token the keys then
    the values of layer 0, then of layer 1, ..., each ``token_dim = num_attention_heads *
    head_dim`` wide (``num_attention_heads`` counts key/value heads)."""

    def past_key_values(self, model: Any, adapter_name: str, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, (keys, values) of shape ``(batch_size, heads, num_virtual_tokens, head_dim)``
        in the base model's dtype."""
        config = model.peft_config[adapter_name]
        heads = config.num_attention_heads
        table = self.prompt_table(model, adapter_name).to(_dtype(model)).repeat(batch_size, 1, 1)
        shape = (batch_size, config.num_virtual_tokens, config.num_layers * 2, heads, config.token_dim // heads)
        per_layer = table.view(shape).permute(2, 0, 3, 1, 4)  # PEFT's layout, so that attention sees its strides
        return [(per_layer[2 * i], per_layer[2 * i + 1]) for i in range(config.num_layers)]

    def model_inputs(self, model: Any, adapter_name: str, inputs: dict[str, Any], rows: Sequence[str] | None = None) -> dict[str, Any]:
        self._one_adapter(rows)
        return self._with_prefix(model, adapter_name, inputs)

    def generation_inputs(self, model: Any, adapter_name: str, inputs: dict[str, Any], rows: Sequence[str] | None = None) -> dict[str, Any]:
        """Without ``use_cache`` every step reads the whole sequence, and the cache generate
        hands back is the last step's prefix cache (the model returns the cache it was given):
        each step then gets a fresh prefix."""
        self._one_adapter(rows)
        if inputs.get("use_cache") is False:
            inputs.pop("cache", None)
            inputs.pop("past_key_values", None)
        return self._with_prefix(model, adapter_name, inputs)

    def _with_prefix(self, model: Any, adapter_name: str, inputs: dict[str, Any]) -> dict[str, Any]:
        """A cache holding the prefix when none is given or it is empty (one that holds entries
        already holds the prefix: a later step); the mask and given positions account for it."""
        count = model.peft_config[adapter_name].num_virtual_tokens
        inputs["attention_mask"] = _ones_before(inputs.get("attention_mask"), count)
        if inputs.get("position_ids") is not None:
            inputs["position_ids"] = inputs["position_ids"] + count
        if _cache_length(inputs) == 0:
            from transformers import DynamicCache  # transformers is what the hook serves

            ids = inputs.get("input_ids")
            batch = (ids if ids is not None else inputs["inputs_embeds"]).shape[0]
            # plain per-layer entries, built as PEFT builds them
            cache = DynamicCache(self.past_key_values(model, adapter_name, batch))
            inputs.pop("past_key_values", None)
            inputs[_cache_keyword(model.model)] = cache
        return inputs


def _ones_before(mask: torch.Tensor | None, count: int) -> torch.Tensor | None:
    """A 2-D attention mask with ``count`` ones in front (None stays None)."""
    if mask is None:
        return None
    if mask.dim() != 2:
        raise ValueError(f"prompt learning needs a 2-D attention mask (batch, length), got shape {tuple(mask.shape)}")
    return torch.cat([mask.new_ones((mask.shape[0], count)), mask], dim=1)


def _cache_length(inputs: dict[str, Any]) -> int:
    """Entries in the cache the step is given (``cache``, or ``past_key_values`` before
    transformers 5.2x); 0 without one."""
    cache = inputs.get("cache", inputs.get("past_key_values"))
    return 0 if cache is None else int(cache.get_seq_length())


def _cache_keyword(model: nn.Module) -> str:
    """The transformers model's name for the KV cache argument."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _dtype(model: Any) -> torch.dtype:
    return next(model.model.parameters()).dtype


def _text_config(model: Any) -> Any:
    config = model.model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _first(config: Any, *names: str) -> Any:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return None
