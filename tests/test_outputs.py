"""Output records: a completion reports finished exactly when it has a finish reason."""

from kernel_core.outputs import CompletionOutput, RequestMetrics, RequestOutput


def test_completion_finished_follows_finish_reason() -> None:
    completion = CompletionOutput(index=0, text="", token_ids=[])
    assert not completion.finished and completion.stop_reason is None and completion.logprobs is None
    completion.finish_reason = "length"
    assert completion.finished


def test_request_output_carries_metrics() -> None:
    output = RequestOutput(
        "r", "Hi", [1, 2], None, [CompletionOutput(0, "!", [3], "stop")], True, RequestMetrics(1.0)
    )
    assert output.metrics.arrival_time == 1.0 and output.metrics.first_token_time is None
    assert output.outputs[0].finished
