from PIL import Image

from glimpse.engine.protocol import ChatMessage, GenerationRequest, ImagePart, SamplingParams, TextPart
from glimpse.engine.upstream.routing import HashRing, affinity_key

IMAGE = Image.new("RGB", (4, 4))


def request(*messages: ChatMessage) -> GenerationRequest:
    return GenerationRequest("r", messages, SamplingParams(max_new_tokens=4))


def user(*parts) -> ChatMessage:
    return ChatMessage("user", tuple(TextPart(p) if isinstance(p, str) else p for p in parts))


def system(text: str) -> ChatMessage:
    return ChatMessage("system", (TextPart(text),))


def assistant(text: str) -> ChatMessage:
    return ChatMessage("assistant", (TextPart(text),))


def test_the_first_image_hash_is_the_key():
    first, second = ImagePart(IMAGE, "a" * 64), ImagePart(IMAGE, "b" * 64)
    key = affinity_key(request(user(first, "What is it?")))
    assert key == affinity_key(request(system("Be brief."), user("Other words", first, second)))
    assert key != affinity_key(request(user(second, "What is it?")))


def test_every_turn_of_a_conversation_has_the_key_of_its_opening():
    opening = [system("You are a shop assistant."), user("Do you sell shoes?")]
    turn1 = affinity_key(request(*opening))
    turn3 = affinity_key(
        request(*opening, assistant("Yes."), user("Red ones?"), assistant("Some."), user("Size 9?"))
    )
    assert turn1 is not None
    assert turn1 == turn3
    assert turn1 != affinity_key(request(system("You are a shop assistant."), user("Do you sell hats?")))
    assert turn1 != affinity_key(request(system("You are a librarian."), user("Do you sell shoes?")))


def test_no_text_and_no_image_gives_no_key():
    assert affinity_key(request(user(""))) is None


def keys(count: int) -> list[str]:
    return [f"key-{i}" for i in range(count)]


def test_the_walk_visits_every_member_once_home_first():
    ring = HashRing([("a", 1), ("b", 1), ("c", 1)])
    for key in keys(50):
        walk = list(ring.walk(key))
        assert sorted(walk) == ["a", "b", "c"]
        assert walk[0] == ring.home(key)


def test_keys_spread_over_members_by_weight():
    ring = HashRing([("a", 1), ("b", 1), ("c", 2)])
    homes = [ring.home(key) for key in keys(4000)]
    shares = {name: homes.count(name) / len(homes) for name in "abc"}
    assert 0.2 < shares["a"] < 0.3
    assert 0.2 < shares["b"] < 0.3
    assert 0.43 < shares["c"] < 0.57


def test_adding_a_member_moves_about_one_in_n_keys_all_to_it():
    before = HashRing([("a", 1), ("b", 1), ("c", 1)])
    after = HashRing([("a", 1), ("b", 1), ("c", 1), ("d", 1)])
    moved = [key for key in keys(4000) if before.home(key) != after.home(key)]
    assert 0.18 < len(moved) / 4000 < 0.32  # 1/4 expected; hash % n would move 3/4
    assert {after.home(key) for key in moved} == {"d"}


def test_removing_a_member_moves_only_its_keys():
    before = HashRing([("a", 1), ("b", 1), ("c", 1)])
    after = HashRing([("a", 1), ("c", 1)])
    for key in keys(2000):
        if before.home(key) != "b":
            assert after.home(key) == before.home(key)
