"""The model side of one rank (:mod:`~kernel_core.runner.worker`, reached only through the
engine's executor): the model forward over the step's flattened tokens
(:mod:`~kernel_core.runner.model_runner`), then :mod:`~kernel_core.runner.sampler` picks every
sampling request's next token in one vectorised pass (penalties in
:mod:`~kernel_core.runner.penalties`, logprobs in :mod:`~kernel_core.runner.logprobs`)."""
