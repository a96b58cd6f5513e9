"""These tests run the kernels compiled on a GPU when the machine has one (``scripts/gpu_check.sh``),
else in Triton's interpreter on CPU tensors: the kernels are imported here with
``TRITON_INTERPRET`` set, and set again for each test of this folder only
(:func:`kernel_core_sdk.triton.interpret_triton_on_cpu` says why).
"""

from kernel_core_sdk.triton import interpret_triton_on_cpu

triton_interpreter = interpret_triton_on_cpu("kernel_core_lora_triton.ops")
