"""The server as clients meet it: the official ``openai`` client against a real ``kcore serve``
process on the tiny model. Completions and chat, streamed and not, n > 1, seeds, logprobs,
adapters as models, tokenize, and every error status with OpenAI's body."""

from __future__ import annotations

import http.client
import json
import time

import openai
import pytest

from .conftest import API_KEY, metric

GREEDY = dict(temperature=0, max_tokens=12, extra_body={"ignore_eos": True})
PROMPT = "The capital of France is"
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def test_completion_and_its_usage(server):
    client = server.client()
    out = client.completions.create(model=server.model, prompt=PROMPT, **GREEDY)
    assert out.object == "text_completion" and out.model == server.model
    [choice] = out.choices
    assert choice.text and choice.finish_reason == "length" and choice.index == 0
    assert out.usage.completion_tokens == 12
    assert out.usage.prompt_tokens == len(server.request("POST", "/tokenize", {"prompt": PROMPT})[1]["tokens"])
    assert out.usage.total_tokens == out.usage.prompt_tokens + 12
    again = client.completions.create(model=server.model, prompt=PROMPT, **GREEDY)
    assert again.choices[0].text == choice.text  # greedy


def test_streamed_completion_adds_up_to_the_whole(server):
    client = server.client()
    whole = client.completions.create(model=server.model, prompt=PROMPT, **GREEDY).choices[0].text
    chunks = list(client.completions.create(model=server.model, prompt=PROMPT, stream=True,
                                            stream_options={"include_usage": True}, **GREEDY))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12


def test_chat_and_streamed_chat(server):
    client = server.client()
    out = client.chat.completions.create(model=server.model, messages=MESSAGES, **GREEDY)
    assert out.object == "chat.completion"
    message = out.choices[0].message
    assert message.role == "assistant" and message.content
    stream = client.chat.completions.create(model=server.model, messages=MESSAGES, stream=True, **GREEDY)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == message.content
    assert chunks[-1].choices[0].finish_reason == "length"


def test_the_stream_is_sse_ending_in_done(server):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    body = {"model": server.model, "prompt": PROMPT, "max_tokens": 3, "stream": True}
    connection.request("POST", "/v1/completions", json.dumps(body),
                       {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200 and response.getheader("content-type").startswith("text/event-stream")
    events = response.read().decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    assert all(e.startswith("data: {") for e in events[:-2])


def test_n_completions_and_seeds(server):
    client = server.client()
    sampled = dict(model=server.model, prompt=PROMPT, max_tokens=8, temperature=1.0, n=3)
    first = client.completions.create(seed=1234, **sampled)
    assert [c.index for c in first.choices] == [0, 1, 2]
    texts = [c.text for c in first.choices]
    assert len(set(texts)) > 1  # the n samples differ
    assert [c.text for c in client.completions.create(seed=1234, **sampled).choices] == texts
    assert [c.text for c in client.completions.create(seed=99, **sampled).choices] != texts
    assert first.usage.completion_tokens == 24
    chat = client.chat.completions.create(model=server.model, messages=MESSAGES, n=2, seed=7, temperature=1.0,
                                          max_tokens=6, stream=True)
    texts = {0: "", 1: ""}
    for chunk in chat:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    alone = client.chat.completions.create(model=server.model, messages=MESSAGES, n=2, seed=7, temperature=1.0,
                                           max_tokens=6)
    assert [texts[0], texts[1]] == [c.message.content for c in alone.choices]


def test_a_batch_of_prompts_gives_choices_in_order(server):
    client = server.client()
    prompts = [PROMPT, "Hello, my name is"]
    batch = client.completions.create(model=server.model, prompt=prompts, n=2, **GREEDY)
    assert [c.index for c in batch.choices] == [0, 1, 2, 3]
    for i, prompt in enumerate(prompts):
        alone = client.completions.create(model=server.model, prompt=prompt, **GREEDY).choices[0].text
        assert batch.choices[2 * i].text == batch.choices[2 * i + 1].text == alone
    ids = server.request("POST", "/tokenize", {"prompt": PROMPT})[1]["tokens"]
    by_ids = client.completions.create(model=server.model, prompt=ids, **GREEDY)
    assert by_ids.choices[0].text == batch.choices[0].text


def test_logprobs(server):
    client = server.client()
    out = client.completions.create(model=server.model, prompt=PROMPT, logprobs=2, **GREEDY)
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 12
    assert "".join(lp.tokens) == out.choices[0].text
    assert all(value <= 0 for value in lp.token_logprobs)
    assert lp.text_offset[0] == 0 and lp.text_offset[1] == len(lp.tokens[0])
    chat = client.chat.completions.create(model=server.model, messages=MESSAGES, logprobs=True, top_logprobs=3,
                                          **GREEDY)
    content = chat.choices[0].logprobs.content
    assert len(content) == 12
    for entry in content:
        assert len(entry.top_logprobs) == 3
        assert entry.token == entry.top_logprobs[0].token and entry.logprob == entry.top_logprobs[0].logprob  # greedy
        assert bytes(entry.bytes).decode() == entry.token


def test_extras_map_onto_the_engine(server):
    client = server.client()
    stopped = client.completions.create(model=server.model, prompt=PROMPT, temperature=0, max_tokens=30,
                                        extra_body={"ignore_eos": True, "min_tokens": 2})
    text = stopped.choices[0].text
    stop = text[4:8]
    cut = client.completions.create(model=server.model, prompt=PROMPT, temperature=0, max_tokens=30, stop=[stop],
                                    extra_body={"ignore_eos": True})
    assert cut.choices[0].finish_reason == "stop" and cut.choices[0].text == text[: text.index(stop)]
    for extra in ({"top_k": 5, "min_p": 0.1, "repetition_penalty": 1.2, "priority": 3},
                  {"presence_penalty": 0.5, "frequency_penalty": 0.5}):
        out = client.completions.create(model=server.model, prompt=PROMPT, max_tokens=4, seed=1,
                                        extra_body=extra, user="someone")
        assert out.usage.completion_tokens <= 4


def test_an_adapter_is_a_model(server, adapter_dir):
    client = server.client()
    models = {m.id: m for m in client.models.list().data}
    assert models[server.model].model_extra["parent"] is None
    assert models["qv8"].model_extra["parent"] == server.model
    base = client.completions.create(model=server.model, prompt=PROMPT, **GREEDY).choices[0].text
    adapted = client.completions.create(model="qv8", prompt=PROMPT, **GREEDY).choices[0].text
    assert adapted != base
    # loaded over HTTP from --adapter-dir, used, unloaded
    status, card = server.request("POST", "/v1/adapters", {"name": "all16", "path": "all16"})
    assert status == 200 and card["id"] == "all16" and card["parent"] == server.model
    assert "all16" in {m.id for m in client.models.list().data}
    other = client.completions.create(model="all16", prompt=PROMPT, **GREEDY).choices[0].text
    assert other not in (base, adapted)
    assert metric(server.metrics(), "kcore_adapters_loaded") == 2
    assert server.request("DELETE", "/v1/adapters/all16")[0] == 200
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="all16", prompt=PROMPT, max_tokens=2)


def test_adapter_paths_outside_the_folder_are_refused(server, adapter_dir, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (adapter_dir / "escape").symlink_to(outside, target_is_directory=True)
    linked = adapter_dir / "linked"
    linked.mkdir()
    (linked / "adapter_config.json").symlink_to(adapter_dir / ".." / "outside.json")
    try:
        for path in ("../outside", str(outside), "escape", "linked", "qv8/../../x", "missing"):
            status, body = server.request("POST", "/v1/adapters", {"name": "evil", "path": path})
            assert status == 400, (path, body)
            assert body["error"]["param"] == "path"
        status, body = server.request("POST", "/v1/adapters", {"name": "qv8", "path": "qv8"})
        assert status == 400 and body["error"]["param"] == "name"
        status, body = server.request("POST", "/v1/adapters", {"name": "bad name!", "path": "all16"})
        assert status == 400 and body["error"]["param"] == "name"
        assert "evil" not in {m.id for m in server.client().models.list().data}
    finally:
        (adapter_dir / "escape").unlink()
        (linked / "adapter_config.json").unlink()
        linked.rmdir()


def test_tokenize_and_detokenize(server):
    assert server.request("POST", "/tokenize", {"prompt": PROMPT}, key=None)[0] == 401
    assert server.request("POST", "/detokenize", {"tokens": [1]}, key=None)[0] == 401
    status, body = server.request("POST", "/tokenize", {"prompt": PROMPT})
    assert status == 200 and body["count"] == len(body["tokens"]) and body["max_model_len"] == 1024
    status, text = server.request("POST", "/detokenize", {"tokens": body["tokens"]})
    assert status == 200 and text["prompt"] == PROMPT
    status, chat = server.request("POST", "/tokenize", {"messages": MESSAGES})
    assert status == 200 and chat["count"] > body["count"]
    assert server.request("POST", "/detokenize", {"tokens": [10**9]})[0] == 400
    assert server.request("POST", "/tokenize", {"model": "nope", "prompt": "x"})[0] == 404


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"temperature": 3}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"n": 0}, "n"),
        ({"top_p": 0}, "top_p"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"logprobs": 50}, "logprobs"),
        ({"echo": True}, "echo"),
        ({"logit_bias": {"1": 2}}, "logit_bias"),
        ({"min_tokens": 20, "max_tokens": 5}, "min_tokens"),
        ({"prompt": list(range(1, 1100))}, "prompt"),  # over the tiny model's 1024-token context
        ({"prompt": ""}, "prompt"),
        ({"prompt": None}, "prompt"),
    ],
)
def test_invalid_completion_fields_are_400_naming_the_field(server, body, param):
    status, error = server.request("POST", "/v1/completions", {"model": server.model, "prompt": PROMPT, **body})
    assert status == 400, error
    assert error["error"]["param"] == param and error["error"]["type"] == "invalid_request_error"
    assert error["error"]["message"]


def test_chat_errors_through_the_client(server):
    client = server.client()
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=server.model, messages=[{"role": "user", "content": "x " * 1100}])
    assert bad.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=server.model, messages=[])
    assert bad.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=server.model, messages=MESSAGES, tools=[{"type": "function",
                                       "function": {"name": "f", "parameters": {}}}])
    assert bad.value.body["param"] == "tools"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=server.model, messages=MESSAGES, top_logprobs=2)
    assert bad.value.body["param"] == "top_logprobs"
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert missing.value.body["code"] == "model_not_found" and missing.value.body["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt=PROMPT, stream=True)


def test_the_api_key_is_required_on_v1_only(server):
    for key in (None, "wrong-key", API_KEY + "x", API_KEY[:-1]):
        status, body = server.request("GET", "/v1/models", key=key)
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
    status, _ = server.request("GET", "/v1/models", headers={"Authorization": f"Basic {API_KEY}"}, key=None)
    assert status == 401
    with pytest.raises(openai.AuthenticationError):
        server.client(api_key="wrong").completions.create(model=server.model, prompt=PROMPT, max_tokens=2)
    assert server.request("GET", "/health", key=None)[0] == 200
    assert server.request("GET", "/metrics", key=None)[0] == 200


def test_other_statuses_keep_openais_body(server):
    status, body = server.request("POST", "/v1/completions", b"{not json")
    assert status == 400 and "JSON" in body["error"]["message"]
    status, body = server.request("GET", "/v1/nothing-here")
    assert status == 404 and body["error"]["message"]
    status, body = server.request("DELETE", "/v1/adapters/not-loaded")
    assert status == 404 and body["error"]["code"] == "model_not_found"


def _open_stream(server, path: str, body: dict) -> http.client.HTTPConnection:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    connection.request("POST", path, json.dumps(body),
                       {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    return connection


def test_a_client_leaving_mid_stream_aborts_and_frees_its_blocks(server):
    before = metric(server.metrics(), "kcore_requests_total", '{finish_reason="abort"}')
    connections = []
    for model, path in ((server.model, "/v1/completions"), ("qv8", "/v1/chat/completions")):
        body = {"model": model, "max_tokens": 900, "temperature": 0, "ignore_eos": True, "stream": True}
        body.update({"prompt": PROMPT} if path == "/v1/completions" else {"messages": MESSAGES})
        connection = _open_stream(server, path, body)
        response = connection.getresponse()
        assert response.status == 200
        response.readline()  # the first event has arrived: the request is running
        connections.append((connection, response))
    health = server.health()
    assert health["num_running"] == 2 and health["num_free_blocks"] < health["num_blocks"]
    for connection, response in connections:
        response.close()
        connection.close()
    server.wait_idle(timeout=20)
    after = metric(server.metrics(), "kcore_requests_total", '{finish_reason="abort"}')
    assert after == before + 2


def test_a_client_leaving_before_a_plain_response_aborts_too(server):
    connection = _open_stream(server, "/v1/completions", {"model": server.model, "prompt": PROMPT, "max_tokens": 900,
                                                          "ignore_eos": True})
    deadline = time.monotonic() + 20
    while server.health()["num_running"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    connection.close()
    server.wait_idle(timeout=20)


def test_an_adapter_in_use_cannot_be_unloaded(server):
    connection = _open_stream(server, "/v1/completions", {"model": "qv8", "prompt": PROMPT, "max_tokens": 900,
                                                          "ignore_eos": True, "stream": True})
    response = connection.getresponse()
    response.readline()
    status, body = server.request("DELETE", "/v1/adapters/qv8")
    assert status == 409 and body["error"]["code"] == "adapter_in_use"
    connection.close()
    server.wait_idle(timeout=20)


def test_metrics_cover_the_issue_list(server):
    server.client().completions.create(model=server.model, prompt=PROMPT, stream=False, **GREEDY)
    text = server.metrics()
    for name in ("kcore_requests_total", "kcore_http_requests_total", "kcore_time_to_first_token_seconds_bucket",
                 "kcore_inter_token_latency_seconds_bucket", "kcore_generation_tokens_per_second",
                 "kcore_num_requests_running", "kcore_num_requests_waiting", "kcore_kv_cache_usage_ratio",
                 "kcore_prefix_cache_hit_rate", "kcore_adapters_loaded", "kcore_process_resident_memory_bytes"):
        assert f"\n{name}" in text, name
    assert metric(text, "kcore_requests_total", '{finish_reason="length"}') >= 1
    assert metric(text, "kcore_http_requests_total", '{code="200"}') >= 1
    assert metric(text, "kcore_time_to_first_token_seconds_count") >= 1
    assert metric(text, "kcore_inter_token_latency_seconds_count") >= 11
    assert metric(text, "kcore_generation_tokens_per_second") > 0
    assert metric(text, "kcore_kv_cache_blocks") == 128


def test_health_and_metrics_carry_no_text_names_or_paths(server, adapter_dir):
    """The open routes (no key) say how much and how fast, never what: no prompt, output,
    adapter name or folder."""
    secret = "zebra-umbrella-4711"
    status, body = server.request("POST", "/v1/completions", {"model": "qv8", "prompt": secret, "max_tokens": 4})
    assert status == 200
    output = body["choices"][0]["text"]
    for text in (server.metrics(), json.dumps(server.health())):
        assert secret not in text and "qv8" not in text and str(adapter_dir) not in text
        assert not output.strip() or output.strip() not in text
