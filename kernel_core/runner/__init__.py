"""Runs each engine step on the selected platform: the model forward over the step's flattened
tokens, then :mod:`~kernel_core.runner.sampler` picks every sampling request's next token in one
vectorised pass (penalties in :mod:`~kernel_core.runner.penalties`, logprobs in
:mod:`~kernel_core.runner.logprobs`)."""
