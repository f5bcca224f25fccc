"""Parameters Glimpse does not implement are refused by name; values that ask for nothing are not."""

from __future__ import annotations

import typing

import pytest

from glimpse.api.openai.params import IGNORED, REFUSED, check_parameters
from glimpse.api.openai.schemas import ChatCompletionRequest
from glimpse.errors import UnsupportedParameter


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("functions", [{"name": "f"}]),
        ("function_call", "auto"),
        ("audio", {"voice": "alloy", "format": "mp3"}),
        ("modalities", ["text", "audio"]),
        ("prediction", {"type": "content", "content": "x"}),
        ("web_search_options", {}),
        ("service_tier", "flex"),
        ("reasoning_effort", "low"),
        ("verbosity", "high"),
        ("guided_json", {"type": "object"}),
        ("temprature", 0.5),
    ],
)
def test_what_glimpse_does_not_do_is_refused_by_name(name, value):
    with pytest.raises(UnsupportedParameter) as err:
        check_parameters({name: value})
    assert err.value.param == name
    assert err.value.status_code == 400
    assert err.value.code == "unsupported_parameter"
    assert name in err.value.message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("functions", []),
        ("function_call", "none"),
        ("modalities", ["text"]),
        ("service_tier", "auto"),
        ("metadata", {"job": "1"}),
        ("store", True),
        ("safety_identifier", "abc"),
        ("prompt_cache_key", "k"),
    ],
)
def test_values_that_ask_for_nothing_and_harmless_labels_pass(name, value):
    check_parameters({name: value})


def test_guided_decoding_extensions_point_to_response_format():
    with pytest.raises(UnsupportedParameter, match="response_format"):
        check_parameters({"guided_regex": "a+"})


def test_every_openai_parameter_is_declared_refused_or_ignored():
    """The openai SDK's list of chat-completions parameters, all accounted for."""
    params = pytest.importorskip("openai.types.chat.completion_create_params")
    names = set(typing.get_type_hints(params.CompletionCreateParamsBase)) | {"stream"}
    declared = {field.alias or name for name, field in ChatCompletionRequest.model_fields.items()}
    assert names - declared - set(REFUSED) - IGNORED == set()
