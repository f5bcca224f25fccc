import pytest

from glimpse.engine.json_schema_strings import UnusableStringBounds, bounded_strings_as_patterns

ANY = "[\\s\\S]"


def test_bounded_strings_anywhere_in_the_schema_become_patterns():
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 8},
            "default": {"type": "string", "minLength": 2},  # a property called like a data keyword
            "tags": {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 3}},
            "either": {"anyOf": [{"type": ["string", "null"], "maxLength": 4}, {"type": "integer"}]},
            "ref": {"$ref": "#/$defs/code"},
        },
        "$defs": {"code": {"type": "string", "minLength": 3, "maxLength": 3}},
    }
    out = bounded_strings_as_patterns(schema)
    assert out["properties"]["name"] == {"type": "string", "pattern": f"^{ANY}{{0,8}}$"}
    assert out["properties"]["default"] == {"type": "string", "pattern": f"^{ANY}{{2,}}$"}
    assert out["properties"]["tags"]["items"] == {"type": "string", "pattern": f"^{ANY}{{1,3}}$"}
    assert out["properties"]["either"]["anyOf"][0]["pattern"] == f"^{ANY}{{0,4}}$"
    assert out["properties"]["either"]["anyOf"][1] == {"type": "integer"}
    assert out["$defs"]["code"] == {"type": "string", "pattern": f"^{ANY}{{3,3}}$"}
    assert schema["properties"]["name"] == {"type": "string", "maxLength": 8}  # a copy: the input is kept


def test_data_and_other_schemas_are_left_alone():
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer", "minimum": 1}, "s": {"type": "string"}},
        "default": {"type": "string", "maxLength": 2},
        "examples": [{"maxLength": 1}],
        "enum": [{"type": "string", "maxLength": 5}],
    }
    assert bounded_strings_as_patterns(schema) == schema
    assert bounded_strings_as_patterns({"type": "array", "maxItems": 2}) == {"type": "array", "maxItems": 2}


@pytest.mark.parametrize(
    ("string", "where"),
    [
        ({"type": "string", "pattern": "^[a-z]+$", "maxLength": 8}, "pattern"),
        ({"type": "string", "minLength": 5, "maxLength": 2}, "above maxLength"),
        ({"type": "string", "maxLength": -1}, "non-negative"),
        ({"type": "string", "maxLength": True}, "non-negative"),
    ],
)
def test_bounds_that_cannot_be_kept_are_refused_naming_where(string, where):
    with pytest.raises(UnusableStringBounds) as err:
        bounded_strings_as_patterns({"type": "object", "properties": {"x": string}})
    assert "#/properties/x" in str(err.value)
    assert where in str(err.value)
