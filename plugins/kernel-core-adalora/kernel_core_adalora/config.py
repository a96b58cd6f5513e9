"""AdaLoRA's hyper-parameters, with PEFT's field names and defaults (``AdaLoraConfig`` extends
``LoraConfig``: the LoRA fields AdaLoRA uses are here, the LoRA features it lacks are inert
keys), and its per-architecture target table."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from kernel_core.contracts.tuner import ExcludeModules, LayerSelection, ModulesToSave, BaseTunerConfig

#: ``target_modules`` when a config has none, by transformers ``model_type`` (facts from PEFT).
DEFAULT_TARGETS: dict[str, tuple[str, ...] | str] = {
    "t5": ("q", "k", "v", "o", "wi", "wo"), "mt5": ("q", "k", "v", "o", "wi_0", "wi_1", "wo"),
    "bart": ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"), "gpt2": ("c_attn",),
    "bloom": ("query_key_value",), "opt": ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
    "gptj": ("q_proj", "v_proj"), "gpt_neox": ("query_key_value",), "gpt_neo": ("q_proj", "v_proj"),
    "llama": ("q_proj", "v_proj"), "llama4": ("q_proj", "v_proj"), "bert": ("query", "value"),
    "roberta": ("query", "key", "value", "dense"), "deberta-v2": ("query_proj", "key_proj", "value_proj", "dense"),
    "gpt_bigcode": ("c_attn",), "deberta": ("in_proj",), "gemma": ("q_proj", "v_proj"), "gemma2": ("q_proj", "v_proj"),
    "gemma3_text": ("q_proj", "v_proj"), "gemma4": r".*language_model\..*\.(q_proj|v_proj)",
    "qwen2": ("q_proj", "v_proj"), "qwen3": ("q_proj", "v_proj"), "nemotron_h": ("q_proj", "k_proj", "v_proj", "o_proj"),
}

#: The key of a module's entry in ``rank_pattern``, as PEFT writes it to ``adapter_config.json``.
RANK_KEY = "{module}.lora_E"


class AdaLoraConfig(BaseTunerConfig, ExcludeModules, LayerSelection, ModulesToSave):
    """One AdaLoRA adapter: ``W + B diag(E) A * lora_alpha / init_r`` per target, starting at
    ``init_r`` triplets per module and pruned, by importance, to ``target_r`` on average over a
    cubic schedule; ``rank_pattern`` records which triplets each module keeps."""

    inert_peft_keys = {"megatron_core": "megatron.core", "qalora_group_size": 16}

    r: int = Field(default=8, description="Unused by AdaLoRA (PEFT keeps LoRA's field); the starting rank is init_r.")
    lora_alpha: int = Field(default=8, description="Scale numerator; the update is divided by init_r. 0: the module's rank.")
    lora_dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="Dropout on the adapter's input.")
    fan_in_fan_out: bool = Field(default=False, description="Weights stored (in, out); the layer follows the module type (Conv1D).")
    bias: Literal["none"] = Field(default="none", description="AdaLoRA trains no bias here.")
    init_lora_weights: bool = Field(default=True, description="E zero and A, B small (the identity); False: random, for tests.")
    target_r: int = Field(default=8, ge=0, description="Average rank per module at the end of the budget schedule.")
    init_r: int = Field(default=12, gt=0, description="Rank of every module before any pruning.")
    tinit: int = Field(default=0, ge=0, description="Warm-up steps before pruning starts.")
    tfinal: int = Field(default=0, ge=0, description="Steps at the end trained with the final rank pattern.")
    deltaT: int = Field(default=1, gt=0, description="Steps between two budget allocations.")
    beta1: float = Field(default=0.85, gt=0.0, lt=1.0, description="EMA factor of the sensitivity smoothing.")
    beta2: float = Field(default=0.85, gt=0.0, lt=1.0, description="EMA factor of the uncertainty.")
    orth_reg_weight: float = Field(default=0.5, ge=0.0, description="Weight of the orthogonality regulariser added to the loss.")
    total_step: int | None = Field(default=None, description="Training steps of the whole run (needed, > 0).")
    rank_pattern: dict[str, list[bool]] | None = Field(
        default=None, description="Kept triplets per module ('<module>.lora_E': [bool] * init_r); set by training."
    )

    @model_validator(mode="after")
    def _schedule_is_possible(self) -> AdaLoraConfig:
        """As in PEFT: the schedule needs a total and room for a pruning phase."""
        if self.total_step is None or self.total_step <= 0:
            raise ValueError("total_step must be given and > 0: AdaLoRA's budget schedule needs the run's length")
        if self.tinit >= self.total_step - self.tfinal:
            raise ValueError(
                f"tinit={self.tinit} and tfinal={self.tfinal} leave no pruning phase in total_step={self.total_step}"
            )
        return self

    @model_validator(mode="after")
    def _rank_pattern_fits(self) -> AdaLoraConfig:
        for key, kept in (self.rank_pattern or {}).items():
            if len(kept) != self.init_r:
                raise ValueError(f"rank_pattern[{key!r}] has {len(kept)} entries, init_r is {self.init_r}")
        return self

    @property
    def kept(self) -> list[bool] | None:
        """Which of the ``init_r`` triplets the module this config was made for keeps (from
        ``rank_pattern``), or None when the pattern does not name it."""
        if self.module_name is None or not self.rank_pattern:
            return None
        return self.rank_pattern.get(RANK_KEY.format(module=self.module_name))

    @property
    def rank(self) -> int:
        """The module's rank: its kept triplets, else ``init_r``."""
        kept = self.kept
        return self.init_r if kept is None else sum(kept)
