from glimpse.sse import aiter_sse_data, iter_sse_data


def test_events_split_on_blank_lines_and_multiline_data_joins():
    lines = ["data: one", "", "data: a", "data: b", "", "data: [DONE]", ""]
    assert list(iter_sse_data(lines)) == ["one", "a\nb", "[DONE]"]


def test_comments_other_fields_and_crlf_are_ignored():
    lines = [": keep-alive\r\n", "event: message\r\n", "id: 7\r\n", "data: x\r\n", "\r\n"]
    assert list(iter_sse_data(lines)) == ["x"]


def test_only_one_leading_space_is_stripped():
    assert list(iter_sse_data(["data:  two spaces", "", "data:none", ""])) == [" two spaces", "none"]


def test_unterminated_last_event_is_still_yielded():
    assert list(iter_sse_data(["data: a", "", "data: tail"])) == ["a", "tail"]


def test_blank_lines_without_data_yield_nothing():
    assert list(iter_sse_data(["", "", ": ping", ""])) == []


async def test_async_variant_matches():
    async def lines():
        for line in ["data: 1", "", "data: 2", "data: 3", ""]:
            yield line

    assert [d async for d in aiter_sse_data(lines())] == ["1", "2\n3"]
