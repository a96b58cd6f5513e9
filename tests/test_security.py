"""Claims of docs/security.md that hold for the whole code base: no module can unpickle, run remote
code or evaluate strings, and a model folder that asks for its own code is refused without it
running. (The server's claims are proven in tests/server, each named in docs/security.md.)"""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: What is installed and run: the core, the SDK, every plugin and platform (their tests aside).
SHIPPED = [ROOT / "kernel_core", ROOT / "sdk" / "kernel_core_sdk",
           *sorted(ROOT.glob("plugins/*/kernel_core_*")), *sorted(ROOT.glob("platforms/*/kernel_core_*"))]
#: Modules that turn bytes into objects by running code.
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}


def _shipped_sources() -> list[Path]:
    files = [path for root in SHIPPED for path in root.rglob("*.py")]
    assert len(files) > 100, SHIPPED  # the scan really reads the code base
    return files


def _findings(path: Path, root: Path = ROOT) -> list[str]:
    """Each unsafe import or call in one source file, as ``file:line what``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        where = f"{path.relative_to(root)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            found += [f"{where} imports {a.name}" for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            found.append(f"{where} imports from {node.module}")
        elif isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            keywords = {k.arg: k.value for k in node.keywords}
            if name in ("eval", "exec"):
                found.append(f"{where} calls {name}()")
            if name.endswith("torch.load") or name == "load" and "weights_only" in keywords:
                weights_only = keywords.get("weights_only")
                if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                    found.append(f"{where} calls torch.load without weights_only=True")
            remote = keywords.get("trust_remote_code")
            if remote is not None and not (isinstance(remote, ast.Constant) and remote.value is False):
                found.append(f"{where} passes trust_remote_code={ast.unparse(remote)}")
            shell = keywords.get("shell")
            if shell is not None and not (isinstance(shell, ast.Constant) and shell.value is False):
                found.append(f"{where} runs a command through a shell")
            if name == "yaml.load":
                found.append(f"{where} calls yaml.load (use yaml.safe_load)")
    return found


def test_no_shipped_module_can_unpickle_eval_or_run_remote_code():
    findings = [finding for path in _shipped_sources() for finding in _findings(path)]
    assert findings == []


@pytest.mark.parametrize("source, expected", [
    ("import pickle", "imports pickle"),
    ("from joblib import load", "imports from joblib"),
    ("import torch\ntorch.load('x')", "torch.load without weights_only=True"),
    ("import torch\ntorch.load('x', weights_only=False)", "torch.load without weights_only=True"),
    ("f(trust_remote_code=True)", "trust_remote_code=True"),
    ("f(trust_remote_code=flag)", "trust_remote_code=flag"),
    ("eval('1')", "calls eval()"),
    ("import subprocess\nsubprocess.run('ls', shell=True)", "through a shell"),
])
def test_the_scan_sees_each_unsafe_pattern(tmp_path, source, expected):
    bad, good = tmp_path / "bad.py", tmp_path / "good.py"
    bad.write_text(source)
    good.write_text("import torch\ntorch.load('x', weights_only=True)\nf(trust_remote_code=False)\n")
    findings = _findings(bad, tmp_path)
    assert len(findings) == 1 and expected in findings[0]
    assert _findings(good, tmp_path) == []


def test_a_model_folder_asking_for_its_own_code_is_refused_without_running_it(tiny_model, tmp_path):
    from kernel_core import LLM

    folder = tmp_path / "custom-code-model"
    shutil.copytree(tiny_model, folder)
    marker = tmp_path / "code-ran"
    (folder / "custom.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n")
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="custom", auto_map={"AutoConfig": "custom.Config", "AutoModelForCausalLM": "custom.Model"})
    (folder / "config.json").write_text(json.dumps(config))
    tokenizer = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer.update(tokenizer_class="CustomTokenizer", auto_map={"AutoTokenizer": [None, "custom.CustomTokenizer"]})
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer))
    with pytest.raises(ValueError, match="trust_remote_code"):
        LLM(str(folder))
    assert not marker.exists()


def test_the_server_listens_on_loopback_unless_told_otherwise():
    from kernel_core.cli import build_parser

    args = build_parser().parse_args(["serve"])
    assert args.host == "127.0.0.1"
