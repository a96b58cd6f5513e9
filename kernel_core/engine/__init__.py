"""The request lifecycle and step loop.

Per completion, the engine keeps an :class:`~kernel_core.engine.detokenizer.IncrementalDetokenizer`
(token ids to text that never splits a character) and a :class:`~kernel_core.engine.stop.StopChecker`
(stop tokens, EOS, max_tokens, stop strings, and the final / pending split of the text); after each
sampled token, ``checker.append(token_id, detokenizer)`` returns the newly final text.
"""
