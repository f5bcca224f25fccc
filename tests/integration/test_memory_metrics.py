from __future__ import annotations

from dataclasses import dataclass

from tests.fakes import FakeEngine

from glimpse.engine.protocol import EngineHealth


@dataclass
class SizedEngine(FakeEngine):
    weight_bytes: int | None = None
    kv_cache_bytes: int | None = None

    def health(self) -> EngineHealth:
        return EngineHealth(True, "ready", weight_bytes=self.weight_bytes, kv_cache_bytes=self.kv_cache_bytes)


async def test_metrics_report_the_engines_weight_and_kv_cache_bytes(make_client):
    async with make_client(SizedEngine(weight_bytes=2_602_480, kv_cache_bytes=25_165_824)) as client:
        metrics = (await client.get("/metrics")).text
    assert "glimpse_engine_weight_bytes 2.60248e+06" in metrics
    assert "glimpse_engine_kv_cache_bytes 2.5165824e+07" in metrics


async def test_sizes_the_engine_does_not_know_read_zero(make_client):
    async with make_client(SizedEngine()) as client:
        metrics = (await client.get("/metrics")).text
    assert "glimpse_engine_weight_bytes 0.0" in metrics  # declared, never set: the gauge default
