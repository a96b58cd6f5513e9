"""``kcore serve --print-examples``: once the server listens, a ``curl`` command per kind of request
and an ``openai`` script, ready to paste into another shell, with the real address and model names.

The API key is never printed: with one set, the examples read it from ``$KERNEL_CORE_API_KEY``.
"""

from __future__ import annotations

import importlib.util
import json
import shlex
import sys
from collections.abc import Sequence

from kernel_core.server.auth import ENV_API_KEY

CHAT_QUESTION = "What is the capital of France?"
#: Prompts that show what a known example adapter learned (its training format, no chat template);
#: any other adapter gets :data:`GENERIC_PROMPT`.
ADAPTER_PROMPTS = {
    # examples/person-records (held-out name and city, as in its eval.jsonl)
    "person-records": "Turn the sentence into a record.\nSentence: Victor (19) has 3 siblings and lives in Glasgow.\n"
    "Record:\n",
}
GENERIC_PROMPT = "Once upon a time"


def base_url(host: str, port: int) -> str:
    """The URL clients use: a wildcard address is reached through loopback; IPv6 in brackets."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def render(url: str, model: str, adapters: Sequence[str] = (), *, api_key: bool = False) -> str:
    """The banner: ``url`` without ``/v1``; ``adapters`` the names served besides ``model``."""
    served = ", ".join([model, *(f"{name} (adapter)" for name in adapters)])
    lines = [f"kcore serve is ready at {url}/v1 serving {served}", ""]
    if api_key:
        lines += [f"The server wants its API key: export {ENV_API_KEY}=<the key> in the shell you paste into.", ""]
    lines.append("Paste into another shell:")
    lines.append("")
    lines.append(_curl(url, "/v1/chat/completions", _chat_body(model), api_key))
    lines.append("")
    if adapters:
        adapter = adapters[0]
        lines.append(_curl(url, "/v1/completions", _completion_body(adapter, ADAPTER_PROMPTS.get(adapter)), api_key))
    else:
        lines.append(_curl(url, "/v1/completions", {**_completion_body(model, None), "stream": True}, api_key))
    lines.append("")
    lines.append(_python(url, model, adapters[0] if adapters else None, api_key))
    return "\n".join(lines) + "\n"


def _chat_body(model: str) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": CHAT_QUESTION}], "max_tokens": 32,
            "temperature": 0}


def _completion_body(model: str, prompt: str | None) -> dict:
    return {"model": model, "prompt": prompt or GENERIC_PROMPT, "max_tokens": 24 if prompt else 32, "temperature": 0}


def _curl(url: str, path: str, body: dict, api_key: bool) -> str:
    stream = body.get("stream", False)
    parts = [f"curl -s{'N' if stream else ''} {shlex.quote(url + path)} -H 'Content-Type: application/json'"]
    if api_key:
        parts.append(f'-H "Authorization: Bearer ${ENV_API_KEY}"')
    parts.append(f"-d {shlex.quote(json.dumps(body))}")
    return " \\\n     ".join(parts) + ("" if stream else "; echo")


def _python(url: str, model: str, adapter: str | None, api_key: bool) -> str:
    """A heredoc for the Python that has ``openai`` (this interpreter when it has it)."""
    python = shlex.quote(sys.executable) if importlib.util.find_spec("openai") else "python3"
    key = f'os.environ["{ENV_API_KEY}"]' if api_key else '"none"'
    streamed = adapter or model
    prompt = ADAPTER_PROMPTS.get(adapter, GENERIC_PROMPT) if adapter else GENERIC_PROMPT
    script = [
        f"{python} - <<'EOF'" + ("" if python != "python3" else "    # needs: pip install openai"),
        *(["import os"] if api_key else []),
        "from openai import OpenAI",
        "",
        f"client = OpenAI(base_url={json.dumps(url + '/v1')}, api_key={key})",
        "chat = client.chat.completions.create(",
        f"    model={json.dumps(model)}, temperature=0, max_tokens=32,",
        f"    messages=[{{\"role\": \"user\", \"content\": {json.dumps(CHAT_QUESTION)}}}],",
        ")",
        "print(chat.choices[0].message.content)",
        f"prompt = {json.dumps(prompt)}",
        f"for chunk in client.completions.create(model={json.dumps(streamed)}, prompt=prompt, max_tokens=32,",
        "                                       temperature=0, stream=True):",
        "    print(chunk.choices[0].text, end=\"\", flush=True)",
        "print()",
        "EOF",
    ]
    return "\n".join(script)
