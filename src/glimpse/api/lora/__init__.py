"""``/v1/load_lora_adapter`` and ``/v1/unload_lora_adapter``: LoRA adapters added and removed at run time
(vLLM's request shapes), for callers whose credential holds the ``admin`` scope."""
