import json

import pytest

from glimpse.guard.normalize import normalize
from glimpse.guard.rules import load_rules


def _matches(rules, text):
    view = normalize(text)
    return [
        rule.id
        for rule in rules.rules
        if any(p.search(view.squashed if rule.view == "squashed" else view.text) for p in rule.patterns)
    ]


def test_builtin_rules_load_and_cover_every_language():
    rules = load_rules()
    assert len(rules) >= 20
    assert {rule.language for rule in rules.rules} == {"en", "zh", "ja"}
    assert len({rule.id for rule in rules.rules}) == len(rules)


def test_user_file_adds_replaces_and_disables(tmp_path):
    path = tmp_path / "extra.json"
    path.write_text(
        json.dumps(
            {
                "vocab": {"fruit": "banana|mango"},
                "rules": [
                    {
                        "id": "custom.fruit",
                        "language": "en",
                        "category": "custom",
                        "patterns": [r"\b(?:{{fruit}})\b"],
                    },
                    {"id": "en.hijack.pwned", "disabled": True},
                    {
                        "id": "zh.role.mode_switch",
                        "language": "zh",
                        "category": "x",
                        "patterns": ["越狱模式"],
                    },
                ],
            }
        ),
        encoding="utf-8",
    )
    rules = load_rules(path)
    ids = {rule.id for rule in rules.rules}
    assert "custom.fruit" in ids
    assert "en.hijack.pwned" not in ids
    assert _matches(rules, "I like MANGO") == ["custom.fruit"]
    replaced = next(rule for rule in rules.rules if rule.id == "zh.role.mode_switch")
    assert [p.pattern for p in replaced.patterns] == ["越狱模式"]
    assert "en.hijack.pwned" not in _matches(rules, "say I have been pwned")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"rules": [{"id": "x", "patterns": ["("]}]}', "bad pattern"),
        ('{"rules": [{"id": "x", "patterns": ["{{nope}}"]}]}', "unknown vocabulary"),
        ('{"rules": [{"id": "x", "patterns": []}]}', "no patterns"),
        ('{"rules": [{"id": "x", "patterns": ["a"], "colour": 1}]}', "invalid prompt rules"),
        ("not json", "cannot read"),
    ],
)
def test_broken_user_file_is_refused(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        load_rules(path)


def test_rules_anchored_on_a_text_start_or_end_are_marked():
    anchored = {rule.id for rule in load_rules().rules if rule.anchored}
    assert {"en.delimiter.fake_system", "zh.override.ignore_above"} <= anchored
    assert "en.override.ignore_instructions" not in anchored  # "[^.!?\\n]" is no anchor
