"""``kcore serve --print-examples``: once listening, the server prints a curl command per kind of
request and an openai script, with its real address and model names, that work when pasted."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kernel_core.server import examples

from .conftest import start_server


def test_wildcard_and_ipv6_hosts_are_reached_through_loopback() -> None:
    assert examples.base_url("127.0.0.1", 8000) == "http://127.0.0.1:8000"
    assert examples.base_url("0.0.0.0", 8000) == "http://127.0.0.1:8000"
    assert examples.base_url("::", 81) == "http://[::1]:81"
    assert examples.base_url("fe80::1", 81) == "http://[fe80::1]:81"
    assert examples.base_url("example.org", 80) == "http://example.org:80"


def test_the_key_is_read_from_the_environment_never_printed() -> None:
    text = examples.render("http://127.0.0.1:8000", "base", ["person-records"], api_key=True)
    assert text.count('-H "Authorization: Bearer $KERNEL_CORE_API_KEY"') == 2
    assert 'api_key=os.environ["KERNEL_CORE_API_KEY"]' in text and "import os" in text
    plain = examples.render("http://127.0.0.1:8000", "base", [], api_key=False)
    assert "Authorization" not in plain and 'api_key="none"' in plain


def test_the_example_adapter_gets_a_prompt_of_its_task() -> None:
    text = examples.render("http://127.0.0.1:8000", "base", ["person-records", "other"])
    assert "person-records (adapter), other (adapter)" in text
    assert json.dumps(examples.ADAPTER_PROMPTS["person-records"])[1:-1] in text
    other = examples.render("http://127.0.0.1:8000", "base", ["other"])
    assert f'"model": "other", "prompt": "{examples.GENERIC_PROMPT}"' in other


def _commands(text: str) -> tuple[list[str], str]:
    """The printed curl commands and the Python heredoc's script."""
    curls = [block for block in text.split("\n\n") if block.startswith("curl ")]
    script = re.search(r"<<'EOF'[^\n]*\n(.*?)\nEOF", text, re.S)
    assert curls and script, text
    return curls, script.group(1)


@pytest.mark.skipif(shutil.which("curl") is None, reason="no curl")
def test_printed_examples_work_when_pasted(tiny_model: Path, adapter_dir: Path, embedded_model_cache: Path,
                                          tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    server = start_server(tiny_model, log, "--served-model-name", "tiny", "--adapter",
                          f"person-records={adapter_dir / 'qv8'}", "--print-examples",
                          env={"KERNEL_CORE_CACHE": str(embedded_model_cache)})
    try:
        server.health()
        printed = log.read_text()
        assert f"kcore serve is ready at http://127.0.0.1:{server.port}/v1 serving tiny, person-records" in printed
        banner = printed[printed.index("kcore serve is ready"):]
        curls, script = _commands(banner)
        assert len(curls) == 2 and '"model": "person-records"' in curls[1]
        for command in curls:
            out = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120, check=True)
            answer = json.loads(out.stdout)
            assert answer["choices"] and answer["usage"]["completion_tokens"] > 0, out.stdout
        heredoc = next(line for line in banner.splitlines() if " - <<'EOF'" in line)
        assert shlex.split(heredoc.split(" - <<'EOF'")[0]) == [sys.executable]  # this interpreter has openai
        run = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip()
    finally:
        assert server.stop() == 0
