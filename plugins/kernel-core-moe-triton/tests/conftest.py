"""These tests run the kernel compiled on a CUDA GPU when the machine has one
(``scripts/gpu_check.sh``), else in Triton's interpreter on CPU tensors: the kernel is imported
here with ``TRITON_INTERPRET`` set, and set again for each test of this folder only
(:func:`kernel_core_sdk.triton.interpret_triton_on_cpu` says why). At the first launch
Triton imports its gluon modules, which assert that the variable is set for the interpreted
helpers they wrap (triton 3.9). A subprocess per test would isolate as well, but pay torch's and
triton's imports, seconds, every time.
"""

from kernel_core_sdk.triton import interpret_triton_on_cpu

triton_interpreter = interpret_triton_on_cpu("kernel_core_moe_triton.moe")
