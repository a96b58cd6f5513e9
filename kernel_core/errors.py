"""Exceptions users and plugin authors can catch; every message names its culprit."""

from __future__ import annotations


class KernelCoreError(Exception):
    """Base of every error kernel-core raises on purpose."""


class PluginError(KernelCoreError):
    """A plugin could not be loaded, validated or selected."""


class PluginLoadError(PluginError):
    """A plugin fault became fatal (``KERNEL_CORE_STRICT_PLUGINS=1``)."""


class IncompatiblePluginError(PluginError):
    """A plugin targets a plugin API major version this kernel-core does not provide."""


class DuplicatePluginError(PluginError):
    """Two distributions register the same name for the same kind."""


class UnknownPluginError(PluginError, LookupError):
    """A plugin name was requested that no loaded plugin provides."""


class PlatformNotAvailableError(PluginError):
    """The requested (or every) platform is absent on this machine."""


class ModelNotFoundError(KernelCoreError, ValueError):
    """A model was named that is neither a known model id nor an existing folder."""


class InvalidModelFolderError(KernelCoreError, ValueError):
    """A model folder lacks ``config.json`` or safetensors weights (pickled ``.bin`` is refused)."""


class UnsupportedModelError(InvalidModelFolderError):
    """A valid model folder asks for something the model plugin does not implement
    (architecture, activation, RoPE variant, partial rotary)."""


class InvalidRequestError(KernelCoreError, ValueError):
    """A request was refused at submission: bad prompt, too long, unknown adapter, duplicate id."""


class ContextLengthError(InvalidRequestError):
    """A prompt, or a prompt plus the ``max_tokens`` asked for, does not fit ``max_model_len``.

    Carries the numbers, so a server can word the refusal as OpenAI does."""

    def __init__(self, message: str, *, prompt_tokens: int, max_tokens: int | None, max_model_len: int) -> None:
        super().__init__(message)
        self.prompt_tokens = prompt_tokens
        #: The output tokens asked for; None when the prompt alone leaves no room.
        self.max_tokens = max_tokens
        self.max_model_len = max_model_len


class FinetuneDataError(KernelCoreError, ValueError):
    """A fine-tuning data file is missing, empty, or has a malformed row (the message names the
    file and the line)."""


class CheckpointError(KernelCoreError, ValueError):
    """A training checkpoint is missing, incomplete, or does not match the run resuming from it."""


class DiskFullError(KernelCoreError, OSError):
    """A save ran out of disk space (or quota); the message names what was being written, and the
    unfinished write has been removed. Its ``errno`` is the original ``ENOSPC`` or ``EDQUOT``."""


class InvalidAdapterConfigError(KernelCoreError, ValueError):
    """An adapter config has a field of the wrong type or value, or names no known method."""


class AdapterLoadError(KernelCoreError, ValueError):
    """An adapter folder cannot be loaded: files missing, pickled weights, or tensors that do
    not fit the model (another base model, corrupt file)."""


class UnknownAdapterError(InvalidRequestError, LookupError):
    """A request or call names an adapter the engine has not loaded."""


class AdapterInUseError(KernelCoreError, RuntimeError):
    """An adapter cannot be unloaded while queued or running requests use it."""
