"""Engine configuration: one pydantic model, so an invalid value fails naming its field."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DTYPES = ("float32", "bfloat16", "float16")


class EngineConfig(BaseModel):
    """Everything ``LLM(model=..., **engine_config)`` accepts besides the model."""

    # inf is no size and no timeout (None means "none"): refused like NaN, naming the field.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    model: str = Field(description="A known model id or a Hugging Face model folder.")
    dtype: str = Field(default="float32", pattern=f"^({'|'.join(DTYPES)})$")
    max_model_len: int | None = Field(
        default=None, ge=1, description="Longest prompt + output; default the model's context."
    )
    max_num_batched_tokens: int = Field(default=2048, ge=1, description="Token budget of one step.")
    max_num_seqs: int = Field(default=128, ge=1, description="Most requests running at once.")
    block_size: int = Field(default=16, ge=1, description="Tokens per KV-cache block.")
    enable_prefix_caching: bool = True
    kv_cache_memory: float | None = Field(
        default=None, gt=0, description="KV-cache budget in GiB; default a fraction of free memory."
    )
    kv_cache_memory_fraction: float = Field(
        default=0.15, gt=0, le=0.95, description="Share of free memory for the KV cache."
    )
    num_kv_blocks: int | None = Field(
        default=None, ge=1, description="Exact number of KV blocks (overrides the memory budget)."
    )
    scheduler_policy: str | None = Field(default=None, description="Plugin name; default by priority.")
    cache_manager: str | None = Field(default=None, description="Plugin name; default by priority.")
    model_architecture: str | None = Field(
        default=None, description="Plugin name; default the highest-priority one running the model."
    )
    attention_backend: str | None = Field(
        default=None, description="Plugin name; default the platform's default backend."
    )
    platform: str | None = Field(default=None, description="Plugin name; default KERNEL_CORE_PLATFORM or auto.")
    seed: int = Field(
        default=0, ge=-(2**63), lt=2**64, description="Seed of the global generator for unseeded sampling."
    )
    request_timeout: float | None = Field(
        default=None, gt=0, description="Seconds after arrival when an unfinished request is aborted."
    )
    enable_lora: bool = Field(default=False, description="Serve LoRA adapters, one per request.")
    max_loras: int = Field(default=8, ge=1, description="Adapters that can run in one step (device slots).")
    max_lora_rank: int = Field(default=16, ge=1, description="Highest adapter rank accepted at load.")
    max_cpu_loras: int | None = Field(
        default=None, ge=1, description="Converted adapters kept in host memory; default max_loras."
    )
    lora_kernel: str | None = Field(default=None, description="Plugin name; default by priority for the device.")
    max_virtual_tokens: int = Field(
        default=64, ge=1,
        description="Most virtual tokens a served prompt- or prefix-tuning adapter may have (sizes their slots).",
    )
    moe_kernel: str | None = Field(
        default=None,
        description="MoE kernel plugin name; default by priority among those running on the device (and "
        "consuming moe_quantization). Only for models whose plugin takes MoE options; refused for others.",
    )
    moe_quantization: Literal["int8"] | None = Field(
        default=None,
        description="Store MoE expert weights as int8 (per expert and output channel scales), quantized at load. "
        "Only for models whose plugin takes MoE options; refused for others.",
    )

    tensor_parallel_size: int = Field(
        default=1, ge=1, description="Ranks the model is split across (workers of the executor)."
    )
    distributed_executor: str | None = Field(
        default=None,
        description="Executor plugin name (uniproc, mp, ray); default the highest-priority one running "
        "tensor_parallel_size workers (the in-process one at 1).",
    )

    plugin_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Settings of plugins, keyed \"<kind>.<name>\" (e.g. {\"attention-backend.torch\": "
        "{\"bucket_bytes\": 65536}}), validated by the Settings model the plugin declares (plugin API 1.6).",
    )

    @model_validator(mode="after")
    def _budget_holds_one_block(self) -> EngineConfig:
        if self.max_num_batched_tokens < self.block_size:
            raise ValueError(
                f"max_num_batched_tokens ({self.max_num_batched_tokens}) must be at least "
                f"block_size ({self.block_size})"
            )
        if self.max_cpu_loras is not None and self.max_cpu_loras < self.max_loras:
            raise ValueError(f"max_cpu_loras ({self.max_cpu_loras}) must be at least max_loras ({self.max_loras})")
        return self
