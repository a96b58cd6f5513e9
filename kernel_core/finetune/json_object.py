"""Reading the JSON object of an option that takes a file (``--training-args``, ``--adapter-config``),
with one-line errors naming the option and the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kernel_core.errors import KernelCoreError


def read_json_object(path: Path, option: str, holds: str, error: type[KernelCoreError]) -> dict[str, Any]:
    """The JSON object in file ``path`` given to ``option``; ``holds`` says what it should hold
    (``"TrainingArguments fields"``), for the message when it is not an object."""
    source = f"{option} {path}"
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{source} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{source} cannot be read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise error(f"{source}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(document, dict):
        raise error(f"{source} must hold a JSON object of {holds}")
    return document
