import pytest

from glimpse.guard.normalize import normalize


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Ｉｇｎｏｒｅ　ＰＲＥＶＩＯＵＳ", "ignore previous"),  # full-width letters and space
        ("ig\u200bnore prev\u200dious\u2060", "ignore previous"),  # zero-width characters
        ("i g n o r e  p r e v i o u s", "ignore previous"),  # letter spacing, wider word gap
        ("ign-ore the ab.ove", "ignore the above"),  # separators inside words
        ("іgnоrе рrеvіоus", "ignore previous"),  # Cyrillic look-alikes
        ("ΙGΝΟRΕ ΡRΕVΙΟUS", "ignore previous"),  # Greek capitals (Ν must not become v)
        ("1gn0re pr3vious", "ignore previous"),  # digits used as letters
        ("ïgnöré", "ignore"),  # diacritics
        ("忽 略 上 文", "忽略上文"),  # spaces between Chinese characters
        ("忽-略.之*前", "忽略之前"),
        ("請忽略先前的指示", "请忽略先前的指示"),  # traditional folded to simplified
        ("you\u2019re", "youre"),
    ],
)
def test_disguises_fold_to_plain_text(raw, expected):
    assert normalize(raw).text == expected


def test_plain_numbers_and_words_are_kept():
    assert normalize("Room 101 costs 45 dollars").text == "room 101 costs 45 dollars"
    assert normalize("I am a cat").text == "i am a cat"


def test_chinese_clause_punctuation_survives_but_spaces_between_words_do_not_merge_words():
    # Full-width comma becomes ASCII (NFKC); it still separates the clauses.
    assert normalize("请忽略图片背景，只看文字").text == "请忽略图片背景,只看文字"
    assert normalize("read the sign").text == "read the sign"


def test_squashed_view_drops_every_separator():
    result = normalize("i g n o r e a l l, p r e v i o u s!")
    assert result.squashed == "ignoreallprevious"


def test_newlines_are_kept_for_line_start_rules():
    assert normalize("hello  \n\n  system:  you").text == "hello\nsystem: you"
