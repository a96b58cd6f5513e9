"""Serving many adapters on one base model, whatever their method: PEFT-format folders read and
handed to the serving their tuner plugin provides (loading.py), the device slots every kind shares
(slots.py), and the registry with its host-memory cache that the engine and scheduler use
(registry.py). The seam itself is :mod:`kernel_core.contracts.serving`."""
