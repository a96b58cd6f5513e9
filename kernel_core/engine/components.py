"""Selecting and building the plugins an engine is made of, from its configuration."""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Callable
from decimal import Decimal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kernel_core.config import EngineConfig
from kernel_core.contracts.attention import AttentionBackend
from kernel_core.contracts.cache import CacheManager
from kernel_core.contracts.model import ModelArchitecture
from kernel_core.contracts.platform import Platform
from kernel_core.contracts.records import PluginKind
from kernel_core.contracts.scheduler import SchedulerPolicy
from kernel_core.errors import InvalidModelFolderError, KernelCoreError, UnknownPluginError
from kernel_core.adapters.loading import ServedKinds
from kernel_core.adapters.registry import AdapterRegistry
from kernel_core.contracts.serving import AdapterServing, ServingContext
from kernel_core.modeling.gemm import install_linear_policy
from kernel_core.modeling.group import TensorParallel
from kernel_core.engine.plugin_options import PluginOptions
from kernel_core.engine.selection import Needs, select_kernel
from kernel_core.modeling.moe import MoEOptions
from kernel_core.models import resolve_model
from kernel_core.platforms import select_platform
from kernel_core.plugins import PluginManager, Registration, get_plugin_manager
from kernel_core.runner.model_runner import bytes_per_block
from kernel_core.runner.worker import ModelWorker

log = logging.getLogger(__name__)
GiB = 2**30


@dataclass
class Components:
    """Everything the engine runs on, chosen once at start-up."""

    folder: Path
    platform: Platform
    device: torch.device
    dtype: torch.dtype
    model: ModelArchitecture
    attention: AttentionBackend
    tokenizer: Any
    max_model_len: int
    num_blocks: int
    cache: CacheManager
    policy: SchedulerPolicy
    #: The engine's ``plugin_options``, applied to everything built here and then to its executor.
    options: PluginOptions
    adapters: AdapterRegistry | None = None


def build_components(config: EngineConfig, manager: PluginManager | None = None, rank: int = 0) -> Components:
    """Resolve the model, pick the platform and every plugin by name or priority, load weights:
    under ``tensor_parallel_size`` N above 1, rank ``rank``'s shard of them (the engine's process
    holds rank 0; :class:`RankWorkerFactory` builds the others where their executor runs them)."""
    from transformers import AutoTokenizer

    manager = manager or get_plugin_manager()
    options = PluginOptions(manager, config.plugin_options)
    folder = resolve_model(config.model)
    platform = select_platform(manager, forced=config.platform).platform
    dtype = _dtype(config.dtype, platform)
    device = _device(platform, config.tensor_parallel_size, rank)
    model_config = json.loads((folder / "config.json").read_text())
    needs = Needs(device.type, config.dtype, _head_size(model_config), config.block_size)
    attention_choice = select_kernel(manager, platform, PluginKind.ATTENTION_BACKEND, config.attention_backend, needs)
    log.info("attention backend %r: %s", attention_choice.registration.name, attention_choice.reason)
    attention_registration = attention_choice.registration
    attention = options.create(attention_registration)
    model_class = manager.load(_architecture(manager, folder, model_config, config.model_architecture))
    moe = _moe_options(config, options, model_class, platform)
    model = model_class.from_pretrained(
        folder, attention=attention, dtype=dtype, device=device, **moe, **_sharding(config, model_class, rank)
    )
    gemm_policy = platform.linear_policy()
    install_linear_policy(gemm_policy)
    model.prepare_weights(gemm_policy.prepare)
    check_sliding_window_support(model, attention, attention_registration.spec.name)
    _check_head_size(model, attention_registration, platform)
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    max_model_len = _max_model_len(config, folder, model_config)
    num_blocks = config.num_kv_blocks or _num_blocks(config, platform, attention, model, dtype)
    _check_fits(
        platform, num_blocks * bytes_per_block(attention, model, config.block_size, dtype),
        f"a KV cache of num_kv_blocks {num_blocks} of block_size {config.block_size}",
    )
    if num_blocks * config.block_size < max_model_len:
        log.warning(
            "the KV cache holds %d tokens, less than max_model_len %d: longer requests are refused",
            num_blocks * config.block_size, max_model_len,
        )
    cache = options.create(
        manager.select(PluginKind.CACHE_MANAGER, config.cache_manager),
        num_blocks, config.block_size, enable_prefix_caching=config.enable_prefix_caching,
    )
    policy = options.create(manager.select(PluginKind.SCHEDULER_POLICY, config.scheduler_policy))
    adapters = _adapter_registry(config, options, platform, model, dtype, device) if config.enable_lora else None
    return Components(
        folder, platform, device, dtype, model, attention, tokenizer, max_model_len, num_blocks, cache, policy, options,
        adapters,
    )


def _head_size(model_config: dict[str, Any]) -> int | None:
    """The attention head size a Hugging Face ``config.json`` declares (``head_dim``, else
    ``hidden_size / num_attention_heads``), to choose a backend before the model loads; None when
    it does not say (the loaded model's ``head_size`` is checked then, :func:`_check_head_size`)."""
    if isinstance(model_config.get("head_dim"), int):
        return model_config["head_dim"]
    hidden, heads = model_config.get("hidden_size"), model_config.get("num_attention_heads")
    return hidden // heads if isinstance(hidden, int) and isinstance(heads, int) and heads > 0 else None


def _check_head_size(model: ModelArchitecture, registration: Registration, platform: Platform) -> None:
    """The loaded model's head size against the backend's ``head_sizes``: authoritative where
    ``config.json`` did not say or said otherwise."""
    problem = Needs(platform.device_type, head_size=model.head_size).problem(registration.spec)
    if problem is not None:
        raise KernelCoreError(
            f"attention backend {registration.name!r} cannot run the {type(model).__name__} model on the "
            f"{platform.name} platform: {problem}; choose another with the attention_backend setting"
        )


def kernel_selector(
    options: PluginOptions, platform: Platform, dtype: torch.dtype
) -> Callable[[PluginKind, str | None], Any]:
    """``ServingContext.select_kernel``: the kernel of ``kind`` named, else the platform's default,
    else by priority among those that run here (:func:`select_kernel`); built with its plugin options."""

    def select(kind: PluginKind, name: str | None) -> Any:
        needs = Needs(platform.device_type, str(dtype).removeprefix("torch."))
        choice = select_kernel(options.manager, platform, kind, name, needs)
        log.info("%s %r: %s", kind, choice.registration.name, choice.reason)
        return options.create(choice.registration)

    return select


def check_sliding_window_support(model: ModelArchitecture, attention: AttentionBackend, attention_name: str) -> None:
    """Refuse a model whose layers attend within sliding windows on a backend that cannot apply
    them: it would attend to the whole context and silently compute another model."""
    if model.sliding_windows and not attention.supports_sliding_window:
        windows = ", ".join(map(str, sorted(model.sliding_windows)))
        raise KernelCoreError(
            f"the {type(model).__name__} model attends within a sliding window ({windows} tokens), but the "
            f"attention backend {attention_name!r} ({type(attention).__name__}) does not support sliding windows "
            "(supports_sliding_window is False): choose another with the attention_backend setting"
        )


def _adapter_registry(
    config: EngineConfig,
    options: PluginOptions,
    platform: Platform,
    model: ModelArchitecture,
    dtype: torch.dtype,
    device: torch.device,
) -> AdapterRegistry:
    """The serving of every installed tuner plugin that provides one (``TunerSpec.serving``),
    each allocating its slots on the model once its memory is known to fit, and the registry
    over them. A kind whose serving fails to build is refused at load, naming why."""
    manager = options.manager
    context = ServingContext(
        max_slots=config.max_loras, max_rank=config.max_lora_rank, dtype=dtype, device=device,
        settings=config.model_dump(), select_kernel=kernel_selector(options, platform, dtype),
    )
    servings: dict[str, AdapterServing] = {}
    unserved: dict[str, str] = {}
    for registration in manager.registrations(PluginKind.TUNER):
        spec = registration.spec
        source = f"tuner {spec.name!r} from {registration.plugin.distribution.name}"
        if spec.serving is None:
            unserved[spec.peft_type] = (
                f"{source} provides no serving (TunerSpec.serving); a tuner plugin for {spec.peft_type!r} that names "
                "an AdapterServing would serve it"
            )
            continue
        serving_class: type[AdapterServing] = spec.load_serving()
        if config.tensor_parallel_size > 1 and not serving_class.supports_tensor_parallel:
            unserved[spec.peft_type] = (
                f"{source} serves it on unsharded models only ({serving_class.__name__}.supports_tensor_parallel is "
                f"False) and this engine runs tensor_parallel_size {config.tensor_parallel_size}"
            )
            continue
        nbytes = serving_class.slot_nbytes(model, context)
        _check_fits(
            platform, nbytes,
            f"{spec.peft_type} adapter slots ({source}) sized by max_loras {config.max_loras}, max_lora_rank "
            f"{config.max_lora_rank} and max_virtual_tokens {config.max_virtual_tokens}",
        )
        servings[spec.peft_type] = serving_class(model, context)
    if not servings:
        raise KernelCoreError(
            "enable_lora: no installed tuner plugin serves adapters (none names an AdapterServing in its TunerSpec)"
        )
    return AdapterRegistry(
        ServedKinds(servings, unserved),
        max_slots=config.max_loras,
        max_cpu_loras=config.max_cpu_loras or config.max_loras,
    )


def _moe_options(
    config: EngineConfig, options: PluginOptions, model_class: type[ModelArchitecture], platform: Platform
) -> dict[str, MoEOptions]:
    """``moe=``, the selected MoE kernel and quantization, for a model plugin whose
    ``from_pretrained`` has a ``moe`` parameter; none for older plugins, which keep working.
    MoE settings for a plugin without it are refused: ignoring them would serve something other
    than what was asked for (full-size experts when int8 was set, another kernel than the one named)."""
    if "moe" in inspect.signature(model_class.from_pretrained).parameters:
        return {
            "moe": MoEOptions.select(
                platform.device(), kernel=config.moe_kernel, quantization=config.moe_quantization,
                manager=options.manager, create=options.create, platform=platform,
            )
        }
    settings = {"moe_kernel": config.moe_kernel, "moe_quantization": config.moe_quantization}
    asked = [f"{field} {value!r}" for field, value in settings.items() if value is not None]
    if asked:
        raise KernelCoreError(
            f"{', '.join(asked)}: the {model_class.__name__} model plugin takes no MoE options (a dense model, "
            "or a plugin whose from_pretrained has no moe parameter); leave the MoE settings unset for it"
        )
    return {}


def _sharding(config: EngineConfig, model_class: type[ModelArchitecture], rank: int) -> dict[str, TensorParallel]:
    """``tp=``, the rank's place in the group, for ``tensor_parallel_size`` above 1 (the group
    itself is the executor's to start before the first step); nothing at size 1, so model plugins
    that cannot load sharded keep working there."""
    size = config.tensor_parallel_size
    if size == 1:
        return {}
    parameters = inspect.signature(model_class.from_pretrained).parameters
    if "tp" not in parameters and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        raise KernelCoreError(
            f"tensor_parallel_size {size}: the {model_class.__name__} model plugin does not load sharded (its "
            "from_pretrained takes no tp); set tensor_parallel_size 1"
        )
    return {"tp": TensorParallel(rank, size)}


def _device(platform: Platform, size: int, rank: int) -> torch.device:
    """Rank ``rank``'s device: the CPU for every rank, else device ``rank`` of the node; more ranks
    than devices are refused, naming both counts (ranks sharing a GPU would only contend)."""
    if platform.device_type == "cpu" or size == 1:
        return platform.device()
    count = platform.device_count()
    if size > count:
        raise KernelCoreError(
            f"tensor_parallel_size {size} exceeds the {count} {platform.name} device(s) this process sees: "
            "one rank per device"
        )
    return platform.device(rank)


def _dtype(name: str, platform: Platform) -> torch.dtype:
    dtype = getattr(torch, name)
    if dtype not in platform.supported_dtypes():
        supported = ", ".join(str(d).removeprefix("torch.") for d in platform.supported_dtypes())
        raise KernelCoreError(f"dtype {name} is not supported on the {platform.name} platform (supported: {supported})")
    return dtype


def _architecture(
    manager: PluginManager, folder: Path, model_config: dict[str, Any], name: str | None
) -> Registration:
    """The model-architecture plugin for the folder's ``architectures``: the one named, else the
    highest-priority one that runs it."""
    wanted = set(model_config.get("architectures") or [])
    if name is not None:
        return manager.get(PluginKind.MODEL_ARCHITECTURE, name)
    try:
        return manager.select(PluginKind.MODEL_ARCHITECTURE, accept=lambda r: bool(wanted & r.spec.architectures))
    except UnknownPluginError:
        installed = "; ".join(
            f"{r.name} from {r.plugin.distribution.name} runs {', '.join(sorted(r.spec.architectures))}"
            for r in sorted(manager.registrations(PluginKind.MODEL_ARCHITECTURE), key=lambda r: r.name)
        )
        raise InvalidModelFolderError(
            f"no model-architecture plugin runs architectures {sorted(wanted) or '(none listed)'} of "
            f"{folder / 'config.json'}; installed model plugins: {installed or 'none'}"
        ) from None


def _max_model_len(config: EngineConfig, folder: Path, model_config: dict[str, Any]) -> int:
    context = model_config.get("max_position_embeddings")
    if config.max_model_len is None:
        if context is None:
            raise InvalidModelFolderError(f"{folder / 'config.json'} has no max_position_embeddings: set max_model_len")
        return context
    if context is not None and config.max_model_len > context:
        raise KernelCoreError(
            f"max_model_len {config.max_model_len} exceeds the model's context ({context} positions)"
        )
    return config.max_model_len


def _check_fits(platform: Platform, nbytes: int, what: str) -> None:
    """Refuse up front what the device cannot hold: allocating it would fail deep inside torch
    (or fill memory page by page until the machine swaps), naming no setting."""
    free = platform.memory_info().free_bytes
    if nbytes > free:
        # Decimal: an int beyond float range (block_size=10**400) still prints.
        raise KernelCoreError(
            f"{what} needs {Decimal(nbytes) / GiB:.4g} GiB, but the {platform.name} device has "
            f"{free / GiB:.4g} GiB free"
        )


def _num_blocks(
    config: EngineConfig, platform: Platform, attention: AttentionBackend, model: ModelArchitecture, dtype: torch.dtype
) -> int:
    """Blocks that fit the budget: ``kv_cache_memory`` GiB, else a fraction of free memory."""
    if config.kv_cache_memory is not None:
        budget = config.kv_cache_memory * GiB
        _check_fits(platform, budget, f"kv_cache_memory {config.kv_cache_memory:g} GiB")  # inf bytes included
    else:
        budget = platform.memory_info().free_bytes * config.kv_cache_memory_fraction
    blocks = int(budget) // bytes_per_block(attention, model, config.block_size, dtype)
    if blocks < 1:
        raise KernelCoreError(f"a KV-cache budget of {budget / GiB:.3f} GiB holds no block: raise kv_cache_memory")
    return blocks


def worker_factory(
    config: EngineConfig, components: Components, eos_token_ids: tuple[int, ...]
) -> Callable[[int, int], ModelWorker]:
    """``ExecutorContext.create_worker``: the worker of the rank whose model, attention backend
    and adapter servings were built here (rank 0, the engine's process)."""

    def create_worker(rank: int, world_size: int) -> ModelWorker:
        if (rank, world_size) != (0, config.tensor_parallel_size):
            raise KernelCoreError(
                f"worker rank {rank} of {world_size}: the engine's process holds rank 0 of "
                f"{config.tensor_parallel_size}; build other ranks with ExecutorContext.build_worker"
            )
        return _worker(config, components, eos_token_ids)

    return create_worker


def _worker(config: EngineConfig, c: Components, eos_token_ids: tuple[int, ...]) -> ModelWorker:
    return ModelWorker(
        c.model, c.attention, num_blocks=c.num_blocks, block_size=config.block_size, dtype=c.dtype,
        device=c.device, eos_token_ids=eos_token_ids, seed=config.seed,
        servings=c.adapters.kinds.servings if c.adapters is not None else None, max_slots=config.max_loras,
    )


@dataclass(frozen=True)
class RankWorkerFactory:
    """``ExecutorContext.build_worker``: builds the worker of any rank from the engine's settings
    alone, in whatever process calls it (picklable: an executor sends it to a worker process or a
    Ray actor). ``num_kv_blocks`` is fixed to the engine's, so every rank's cache holds the same
    block ids the engine's scheduler hands out."""

    config: EngineConfig
    eos_token_ids: tuple[int, ...]

    def __call__(self, rank: int, world_size: int) -> ModelWorker:
        if world_size != self.config.tensor_parallel_size or not 0 <= rank < world_size:
            raise KernelCoreError(f"worker rank {rank} of {world_size}: the engine runs tensor_parallel_size "
                                  f"{self.config.tensor_parallel_size}")
        return _worker(self.config, build_components(self.config, rank=rank), self.eos_token_ids)
