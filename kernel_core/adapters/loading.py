"""A PEFT-format folder read for serving and handed to the serving of its kind.

The core reads the files (safetensors only), parses the config through the installed tuner, and
finds the :class:`~kernel_core.contracts.serving.AdapterServing` by the folder's ``peft_type``;
the serving converts it. A kind that nothing here serves is refused at load, naming the kind and
what would serve it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from kernel_core.contracts.serving import AdapterServing, ServedAdapter
from kernel_core.errors import AdapterLoadError, KernelCoreError
from kernel_core.peft.config import config_from_dict
from kernel_core.peft.state_dict import CONFIG_NAME, WEIGHTS_NAME, read_adapter


@dataclass
class HostAdapter:
    """One loaded adapter in host memory: the core's identity of it and its served form."""

    name: str
    key: int  #: unique per load: the prefix cache's identity of this adapter's KV
    kind: str  #: its ``peft_type``
    path: Path
    served: ServedAdapter
    #: The files as they were read (see :func:`fingerprint`): a later re-read must find the same.
    fingerprint: tuple[tuple[int, int, int], ...] = ()

    @property
    def rank(self) -> int:
        return self.served.rank

    @property
    def nbytes(self) -> int:
        return self.served.nbytes

    @property
    def num_virtual_tokens(self) -> int:
        return self.served.num_virtual_tokens


@dataclass(frozen=True)
class ServedKinds:
    """The servings an engine built, by ``peft_type``, and what to say about other kinds."""

    servings: Mapping[str, AdapterServing]
    #: ``peft_type`` -> why installed tuners of that kind serve nothing here: "tuner 'x' from
    #: package y provides no serving (...)", or a serving that cannot run on a sharded model.
    unserved: Mapping[str, str]

    def serving_for(self, peft_type: object, where: str) -> AdapterServing:
        """The serving of ``peft_type``; :class:`AdapterLoadError` names the kind and what would serve it."""
        serving = self.servings.get(peft_type) if isinstance(peft_type, str) else None
        if serving is not None:
            return serving
        served = ", ".join(sorted(self.servings)) or "none"
        if isinstance(peft_type, str) and peft_type in self.unserved:
            raise AdapterLoadError(
                f"{where}: adapters of kind {peft_type!r} cannot be served: {self.unserved[peft_type]} "
                f"(kinds served here: {served})"
            )
        raise AdapterLoadError(
            f"{where}: adapters of kind {peft_type!r} cannot be served: no installed tuner plugin has that peft_type; "
            f"install one whose TunerSpec names an AdapterServing (kinds served here: {served})"
        )


def load_host_adapter(name: str, path: str | Path, key: int, kinds: ServedKinds) -> HostAdapter:
    """Read, check and convert one PEFT-format folder; :class:`AdapterLoadError` names whatever
    the serving path cannot run."""
    source = Path(path)
    where = f"adapter {name!r} ({source})"
    stamp = fingerprint(source)
    config_dict, tensors = read_adapter(source)
    peft_type = config_dict.get("peft_type")
    serving = kinds.serving_for(peft_type, where)  # before parsing: its method may not be installed
    try:
        config = config_from_dict(config_dict)
    except KernelCoreError as exc:
        raise AdapterLoadError(f"{where}: {exc}") from None
    return HostAdapter(name, key, peft_type, source, serving.convert(name, config, tensors, where), stamp)


def fingerprint(folder: Path) -> tuple[tuple[int, int, int], ...]:
    """(inode, size, mtime) of the adapter's files: what tells a re-read from host-cache
    eviction that the folder changed on disk since the adapter was loaded."""
    stamps = []
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        try:
            stat = (folder / name).stat()
        except OSError:
            continue  # read_adapter names what is missing
        stamps.append((stat.st_ino, stat.st_size, stat.st_mtime_ns))
    return tuple(stamps)
