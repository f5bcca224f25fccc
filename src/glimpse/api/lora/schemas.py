"""Wire schemas of the LoRA adapter routes: vLLM's request bodies, a small JSON answer."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["LoadLoraAdapterRequest", "LoraAdapterObject", "UnloadLoraAdapterRequest"]

_NAME = r"^[^\s]+$"


class LoadLoraAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    lora_name: str = Field(
        min_length=1, max_length=200, pattern=_NAME, description="The name requests use as their model."
    )
    lora_path: str = Field(
        min_length=1, max_length=4096, description="A PEFT adapter folder on the server's machine."
    )


class UnloadLoraAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    lora_name: str = Field(min_length=1, max_length=200, description="The adapter to stop serving.")


class LoraAdapterObject(BaseModel):
    object: str = "lora_adapter"
    id: str
    parent: str
    root: str
    rank: int
    status: str
