"""LoRA adapters: which layers they change (``targets``), reading them (``adapter``) and applying
several at once, per batch row (``bank``)."""

from glimpse.engine.lora.targets import LoraTargets, language_model_prefix, lora_targets, vision_prefix

__all__ = ["LoraTargets", "language_model_prefix", "lora_targets", "vision_prefix"]
