"""Wire schemas of the LoRA adapter routes: vLLM's request bodies, a small JSON answer."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["LoadLoraAdapterRequest", "LoraAdapterObject", "UnloadLoraAdapterRequest", "UpstreamAnswer"]

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


class UpstreamAnswer(BaseModel):
    """What one upstream answered, behind a gateway (``--engine upstream``)."""

    upstream: str = Field(description="The upstream's URL, without credentials.")
    ok: bool
    status: int = Field(description="Its HTTP status; 0 when it did not answer.")
    message: str


class LoraAdapterObject(BaseModel):
    object: str = "lora_adapter"
    id: str
    parent: str
    root: str
    rank: int
    status: str
    upstreams: list[UpstreamAnswer] = Field(
        default_factory=list,
        description="Behind a gateway, each upstream's answer (the call succeeds when one of them did it).",
    )
