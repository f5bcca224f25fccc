"""Length-bounded strings in a JSON schema, rewritten so xgrammar's output is always valid JSON.

xgrammar (0.2.9, its latest release) turns a string with ``minLength``/``maxLength`` into
a bounded repetition of "any character but quote, backslash, CR and LF": the other
control characters (a tab, U+0010) come out raw, which is not JSON, and escapes cannot
come out at all (xgrammar issue 800; the fix, pull request 880, is not released). On the
tiny model about one answer in eight with a ``maxLength`` field failed to parse, and
instructor, LangChain and the Agents SDK failed with it.

Its ``pattern`` path is JSON-aware (no raw control character, quote or backslash), so a
bounded string without a pattern becomes the pattern ``^[\\s\\S]{min,max}$``: the length
is kept and the output parses; escapes still cannot come out (as before). A string with
both a pattern and a length bound is refused: xgrammar ignores the bound beside a pattern,
so the output would not validate against the schema.
"""

from __future__ import annotations

from typing import Any

__all__ = ["UnusableStringBounds", "bounded_strings_as_patterns"]

#: Keywords whose value is data, not a schema: nothing inside them is rewritten.
_DATA = frozenset({"const", "enum", "default", "examples", "example"})
#: Keywords whose value maps names to schemas (a property may be called "default").
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})
_BOUNDS = ("minLength", "maxLength")


class UnusableStringBounds(ValueError):
    """A string schema with both a pattern and a length bound (``str(exc)`` names where)."""


def bounded_strings_as_patterns(schema: Any) -> Any:
    """A copy of ``schema`` with every length-bounded string's bounds turned into a pattern."""
    return _rewrite(schema, "#")


def _rewrite(node: Any, where: str) -> Any:
    if isinstance(node, list):
        return [_rewrite(item, f"{where}/{index}") for index, item in enumerate(node)]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DATA:
            out[key] = value
        elif key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: _rewrite(sub, f"{where}/{key}/{name}") for name, sub in value.items()}
        else:
            out[key] = _rewrite(value, f"{where}/{key}")
    if not any(bound in out for bound in _BOUNDS) or not _may_be_string(out):
        return out
    if "pattern" in out:
        raise UnusableStringBounds(
            f"{where}: a string with both a pattern and minLength/maxLength cannot be enforced "
            "(put the length into the pattern, e.g. ^[a-z]{2,8}$)"
        )
    low, high = out.pop("minLength", 0), out.pop("maxLength", None)
    if not _is_count(low) or (high is not None and not _is_count(high)):
        raise UnusableStringBounds(f"{where}: minLength and maxLength must be non-negative integers")
    if high is not None and low > high:
        raise UnusableStringBounds(f"{where}: minLength {low} is above maxLength {high}")
    out["pattern"] = f"^[\\s\\S]{{{low},{'' if high is None else high}}}$"
    return out


def _may_be_string(schema: dict[str, Any]) -> bool:
    kind = schema.get("type")
    return kind is None or kind == "string" or (isinstance(kind, list) and "string" in kind)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
