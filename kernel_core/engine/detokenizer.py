"""Incremental detokenization: output token ids in, finished text out, never half a character.

Byte-level BPE splits a multi-byte character (emoji, CJK, accents) across tokens; decoding a
prefix then ends in U+FFFD. Each step decodes a short window (the previous chunk's tokens as
context, then the pending ones) and releases the text past the context only when it does not end
in U+FFFD; at the end, :meth:`IncrementalDetokenizer.flush` releases what is left, exactly as a
full ``decode`` would render it. So ``decode(prompt)`` (less a trailing U+FFFD, when the prompt
ends inside a character) followed by every delta equals ``decode(prompt + output)``.

Why not ``tokenizers.decoders.DecodeStream``: it does the per-step part, but seeded with the prompt
ids it re-emits the whole prompt when the prompt ends inside a character (checked with
tokenizers 0.23), and it cannot flush the held-back tail at the end of a request. Decoding itself
is still the library's (the fast tokenizer's Rust backend).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: Prompt tokens decoded ahead of the output as context, so that decoders which treat the start
#: of a text specially (Metaspace drops a leading space) render the boundary as in the full text.
_CONTEXT_TOKENS = 4
_BROKEN = "\ufffd"


class IncrementalDetokenizer:
    """One per completion. Cheap: one short decode per token, one more per released chunk."""

    def __init__(
        self, tokenizer: Any, prompt_token_ids: Sequence[int], skip_special_tokens: bool = True
    ) -> None:
        """``tokenizer``: a ``transformers`` fast tokenizer or a ``tokenizers.Tokenizer``."""
        self._backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
        self._skip_special_tokens = skip_special_tokens
        self._ids: list[int] = []  # the last released chunk (context), then the pending tokens
        self._read = 0  # where the pending tokens start in _ids
        self._released = ""  # decode(_ids[:_read])
        for token_id in self._prompt_context(prompt_token_ids):
            self.step(token_id)  # prompt text is not output; only the state matters
        if self._read < len(self._ids):
            # The prompt ends inside a character: what precedes the character is prompt text.
            self._released = self._decode(self._ids).rstrip(_BROKEN)

    def step(self, token_id: int) -> str:
        """Add one output token; return the text it completes ("" while a character is split)."""
        self._ids.append(token_id)
        text = self._decode(self._ids)
        if len(text) <= len(self._released) or text.endswith(_BROKEN):
            return ""
        return self._release(text)

    def flush(self) -> str:
        """The text still held back (a character the output ended inside, as ``decode`` shows it)."""
        text = self._decode(self._ids)
        return self._release(text) if len(text) > len(self._released) else ""

    def _release(self, text: str) -> str:
        delta = text[len(self._released) :]
        del self._ids[: self._read]
        self._read = len(self._ids)
        self._released = self._decode(self._ids)
        return delta

    def _decode(self, ids: list[int]) -> str:
        return self._backend.decode(ids, skip_special_tokens=self._skip_special_tokens)

    def _prompt_context(self, prompt_token_ids: Sequence[int]) -> Sequence[int]:
        """The last few prompt tokens, extended back until they start on a character boundary
        with at least one character in them.

        The prompt may end inside a character that the output completes: all of its bytes must
        be in the window for it to decode whole. Skipped special tokens decode to nothing, so a
        window of only those says nothing of a split character before them: it grows too.
        """
        start = max(0, len(prompt_token_ids) - _CONTEXT_TOKENS)
        while start > 0:
            window = self._decode(list(prompt_token_ids[start:]))
            if window and not window.startswith(_BROKEN):
                break
            start -= 1
        return prompt_token_ids[start:]
