import io

import httpx
import pytest

from glimpse.client.ask import ask


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(b"\x89PNG fake")
    return path


@pytest.fixture
def server(monkeypatch):
    """Every ``httpx.Client`` talks to ``server.handler``; ``server.urls`` records where requests went."""

    class Server:
        urls: list[str] = []

        @staticmethod
        def handler(request):
            Server.urls.append(str(request.url))
            return Server.reply(request)

        @staticmethod
        def reply(request):
            return httpx.Response(200, json={"choices": [{"message": {"content": "a cat"}}]})

    real = httpx.Client.__init__

    def with_fake_transport(self, *a, **kw):
        kw["transport"] = httpx.MockTransport(Server.handler)
        real(self, *a, **kw)

    monkeypatch.setattr(httpx.Client, "__init__", with_fake_transport)
    return Server


def run(image, *, url="http://h:1", stream=False, timeout=5.0):
    out, err = io.StringIO(), io.StringIO()
    code = ask(
        url,
        image,
        "What?",
        stream=stream,
        max_tokens=None,
        temperature=None,
        api_key=None,
        timeout=timeout,
        out=out,
        err=err,
    )
    return code, out.getvalue(), err.getvalue()


def test_answer_goes_to_out_and_a_v1_or_schemeless_url_is_accepted(image, server):
    for url in ("http://h:1", "http://h:1/v1/", "h:1"):
        assert run(image, url=url) == (0, "a cat\n", "")
    assert set(server.urls) == {"http://h:1/v1/chat/completions"}


@pytest.mark.parametrize("stream", [False, True])
def test_server_errors_go_to_err_not_to_the_answer(image, server, stream):
    server.reply = lambda request: httpx.Response(415, json={"error": {"message": "not an image"}})
    code, out, err = run(image, stream=stream)
    assert (code, out, err) == (1, "", "error 415: not an image\n")


def test_an_error_mid_stream_goes_to_err(image, server):
    events = b'data: {"choices": [{"delta": {"content": "a c"}}]}\n\ndata: {"error": {"message": "oom"}}\n\n'
    server.reply = lambda request: httpx.Response(200, content=events)
    code, out, err = run(image, stream=True)
    assert (code, out, err) == (1, "a c\n", "error: oom\n")


def test_unreadable_images_are_one_line_errors(tmp_path, server):
    for path in (tmp_path / "missing.png", tmp_path):
        code, out, err = run(path)
        assert (code, out) == (2, "")
        assert err.startswith("error: ")
        assert err.count("\n") == 1
    assert server.urls == []


def test_unreachable_server_and_bad_timeout_are_one_line_errors(image, server):
    def refuse(request):
        raise httpx.ConnectError("Connection refused", request=request)

    server.reply = refuse
    assert run(image) == (2, "", "error: http://h:1: ConnectError: Connection refused\n")
    code, out, err = run(image, timeout=0)
    assert (code, out, err) == (2, "", "error: --timeout must be positive, got 0\n")


def test_a_malformed_event_mid_stream_is_a_one_line_error_not_a_traceback(image, server):
    events = b'data: {"choices": [{"delta": {"content": "a c"}}]}\n\ndata: {not json\n\n'
    server.reply = lambda request: httpx.Response(200, content=events)
    code, out, err = run(image, stream=True)
    assert (code, out) == (1, "a c\n")
    assert err.startswith("error: the server sent a malformed event")
