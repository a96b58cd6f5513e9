"""When a completion ends, and which of its text is final.

After each new token: a stop token id or EOS (unless ``ignore_eos``) ends it with ``"stop"``,
the ``max_tokens``-th token with ``"length"``, and a stop string completed by the token's text
ends it with ``"stop"`` too (winning over ``"length"``, as in vLLM), cutting the text before the
string (or after it with ``include_stop_str_in_output``). Nothing stops the first ``min_tokens``
tokens. A stop token's own text stays out of the output unless ``include_stop_str_in_output``.

While running, the tail that could still be the start of a stop string is *pending*: it is never
released, so streamed text is never taken back.
"""

from __future__ import annotations

from collections.abc import Collection

from kernel_core.engine.detokenizer import IncrementalDetokenizer
from kernel_core.outputs import FinishReason
from kernel_core.sampling_params import SamplingParams


class StopChecker:
    """One per completion; feed it every output token with :meth:`append`."""

    def __init__(self, params: SamplingParams, max_tokens: int, eos_token_ids: Collection[int] = ()) -> None:
        """``max_tokens``: the engine's limit, ``params.max_tokens`` capped by what the context leaves."""
        self.params = params
        self.max_tokens = max_tokens
        self._eos = frozenset(() if params.ignore_eos else eos_token_ids)
        self._stop_ids = frozenset(params.stop_token_ids)
        self._longest_stop = max(map(len, params.stop), default=0)
        self._num_tokens = 0
        self._text = ""  # all text so far (cut at a stop string once one is found)
        self._final = 0  # length of the prefix of _text that no stop string can cut any more
        self.finish_reason: FinishReason | None = None
        #: The stop string or stop token id that ended the completion; ``None`` otherwise.
        self.stop_reason: str | int | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def text(self) -> str:
        """The final text so far: all of it once finished."""
        return self._text[: self._final]

    @property
    def pending(self) -> str:
        """Text held back because it may be the start of a stop string."""
        return self._text[self._final :]

    def append(self, token_id: int, detokenizer: IncrementalDetokenizer) -> str:
        """Account for one new output token; return the text it made final (often ``""``)."""
        if self.finished:
            raise RuntimeError(
                f"token {token_id} appended after the completion finished ({self.finish_reason})"
            )
        self._num_tokens += 1
        may_stop = self._num_tokens > self.params.min_tokens
        if may_stop and (token_id in self._stop_ids or token_id in self._eos):
            self.finish_reason = "stop"
            self.stop_reason = token_id if token_id in self._stop_ids else None
        elif self._num_tokens >= self.max_tokens:
            self.finish_reason = "length"

        if self.finished and not self.params.include_stop_str_in_output and self.finish_reason == "stop":
            new_text = detokenizer.flush()  # the stop token's own text stays out
        else:
            new_text = detokenizer.step(token_id)
            if self.finished:
                new_text += detokenizer.flush()
        previous_length = len(self._text)
        self._text += new_text
        if may_stop and self.params.stop:
            self._find_stop_string(previous_length)
        return self._advance_final()

    def _find_stop_string(self, previous_length: int) -> None:
        """Cut the text at the earliest stop string that ends in the new text, if any."""
        found: tuple[int, str] | None = None
        for stop in self.params.stop:
            index = self._text.find(stop, max(0, previous_length - len(stop) + 1))
            if index >= 0 and (found is None or index < found[0]):
                found = (index, stop)
        if found is not None:
            index, stop = found
            self._text = self._text[: index + len(stop) if self.params.include_stop_str_in_output else index]
            self.finish_reason = "stop"
            self.stop_reason = stop

    def _advance_final(self) -> str:
        """Move the final mark as far as the pending rule allows; return the text it passed."""
        start = self._final
        if self.finished or self.params.include_stop_str_in_output:
            # With the stop string kept, a started one is output anyway: nothing to hold back.
            self._final = len(self._text)
        else:
            self._final = max(start, len(self._text) - self._stop_prefix_length())
        return self._text[start : self._final]

    def _stop_prefix_length(self) -> int:
        """Length of the longest end of the text that is a proper prefix of a stop string."""
        for length in range(min(len(self._text), self._longest_stop - 1), 0, -1):
            tail = self._text[-length:]
            if any(stop.startswith(tail) for stop in self.params.stop):
                return length
        return 0
