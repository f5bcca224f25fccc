"""Cache-aware routing through the engine: conversations and images keep their upstream."""

from PIL import Image

from glimpse.engine.protocol import ChatMessage, GenerationRequest, ImagePart, TextPart

from ._fakes import Harness, collect, make_sampling


def conversation(opening: str, turns: int) -> GenerationRequest:
    messages = [ChatMessage("system", (TextPart("Be brief."),)), ChatMessage("user", (TextPart(opening),))]
    for turn in range(1, turns):
        messages += [
            ChatMessage("assistant", (TextPart(f"answer {turn}"),)),
            ChatMessage("user", (TextPart(f"follow-up {turn}"),)),
        ]
    return GenerationRequest(f"{opening}-{turns}", tuple(messages), make_sampling())


async def test_every_turn_of_a_conversation_goes_to_one_upstream():
    h = Harness(routing_policy="cache_aware")
    await h.engine.start()
    try:
        served: dict[str, set[str]] = {}
        for opening in [f"question {i}" for i in range(12)]:
            for turns in (1, 2, 3):
                before = h.chat_attempts()
                await collect(h.engine, conversation(opening, turns))
                after = h.chat_attempts()
                served.setdefault(opening, set()).update(k for k in after if after[k] != before[k])
    finally:
        await h.engine.stop()
        await h.client.aclose()
    assert all(len(hosts) == 1 for hosts in served.values())
    assert len(set().union(*served.values())) > 1  # different conversations spread
    assert h.metrics.routes == ["affinity_kept"] * 36


async def test_questions_about_one_image_go_to_one_upstream_and_fail_over():
    h = Harness(routing_policy="cache_aware")
    await h.engine.start()
    image = ImagePart(Image.new("RGB", (8, 8), (200, 10, 10)), "f" * 64)

    def ask(question: str) -> GenerationRequest:
        return GenerationRequest(
            question, (ChatMessage("user", (image, TextPart(question))),), make_sampling()
        )

    try:
        for question in ("Colour?", "Shape?", "Count?"):
            await collect(h.engine, ask(question))
        attempts = h.chat_attempts()
        (home,) = [host for host, count in attempts.items() if count]
        assert attempts[home] == 3
        h[home].down = True
        await collect(h.engine, ask("Again?"))
    finally:
        await h.engine.stop()
        await h.client.aclose()
    assert h.metrics.routes == ["affinity_kept"] * 4 + ["overridden_health"]
