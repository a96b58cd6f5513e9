"""Serving many LoRA adapters on one base model: PEFT-format adapters converted to the served
model's fused projections (adapter.py), the active slots the LoRA kernel reads (slots.py), and
the registry with its host-memory cache that the engine and scheduler use (registry.py)."""
