from glimpse.engine.text import IncrementalDecoder, StopMatcher


def _byte_decode(ids):
    return bytes(ids).decode("utf-8", errors="replace")


def test_incremental_decoder_never_splits_multibyte_characters():
    text = "图片 cat 猫"
    decoder = IncrementalDecoder(_byte_decode)
    deltas = [decoder.push(b) for b in text.encode()]
    deltas.append(decoder.flush())
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)
    assert "" in deltas  # the middle bytes of a character released nothing


def test_incremental_decoder_flush_releases_a_broken_tail():
    decoder = IncrementalDecoder(_byte_decode)
    for b in b"ok" + "图".encode()[:2]:
        decoder.push(b)
    assert decoder.emitted == "ok"
    assert decoder.flush() == "\ufffd"


def test_stop_matcher_cuts_at_a_stop_split_across_deltas():
    matcher = StopMatcher(("STOP",))
    out = matcher.feed("hello ST") + matcher.feed("O") + matcher.feed("P and more")
    assert out == "hello "
    assert matcher.stopped
    assert matcher.feed("later") == ""


def test_stop_matcher_releases_a_false_partial_match():
    matcher = StopMatcher(("STOP",))
    assert matcher.feed("a ST") == "a "
    assert matcher.feed("ART") == "START"
    assert matcher.flush() == ""
    assert not matcher.stopped


def test_stop_matcher_first_of_several_stops_wins():
    matcher = StopMatcher(("。", "\n\n"))
    assert matcher.feed("第一句\n\n第二句。") == "第一句"


def test_stop_matcher_without_stops_passes_everything():
    matcher = StopMatcher(())
    assert matcher.feed("abc") == "abc"
    assert matcher.flush() == ""
