"""Image URLs: the SSRF gate, redirects, timeouts and the streaming size cap (no network)."""

import asyncio
import socket

import httpx
import pytest

from glimpse.config import MediaSettings
from glimpse.errors import ImageTooLarge, InvalidImage
from glimpse.media import ImageIntake, create_fetch_client, system_resolver

from ._images import RED, solid

PUBLIC = "93.184.216.34"
PNG = solid("PNG", size=(16, 16), colour=RED)
NOT_PUBLIC = "does not resolve to a public address"


class FakeNet:
    """A resolver table plus an HTTP handler, recording what was asked of each."""

    def __init__(self, names=None, routes=None):
        self.names = {"img.example.com": [PUBLIC], **(names or {})}
        self.routes = routes or {}
        self.lookups: list[str] = []
        self.requests: list[httpx.Request] = []

    async def resolve(self, host, port):
        self.lookups.append(host)
        if host not in self.names:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return list(self.names[host])

    async def handle(self, request):
        self.requests.append(request)
        key = (request.headers["host"], request.url.path)
        route = self.routes.get(key)
        if route is None:
            return httpx.Response(200, content=PNG)
        return route(request) if callable(route) else route

    def intake(self, **overrides):
        settings = MediaSettings(allow_urls=True, **overrides)
        client = httpx.AsyncClient(transport=httpx.MockTransport(self.handle))
        return ImageIntake(settings, http_client=client, resolver=self.resolve)


async def test_urls_are_off_by_default():
    net = FakeNet()
    client = httpx.AsyncClient(transport=httpx.MockTransport(net.handle))
    intake = ImageIntake(MediaSettings(), http_client=client, resolver=net.resolve)
    with pytest.raises(InvalidImage, match="Image URLs are disabled") as caught:
        await intake.from_reference("https://img.example.com/cat.png")
    assert caught.value.status_code == 400
    assert net.lookups == []
    assert net.requests == []


async def test_public_url_is_fetched_from_the_checked_address_with_the_right_host_and_sni():
    net = FakeNet()
    result = await net.intake().from_reference("https://img.example.com/cat.png?size=1")
    assert result.format == "PNG"
    assert result.width == 16
    (request,) = net.requests
    assert request.url.host == PUBLIC
    assert request.url.scheme == "https"
    assert request.url.path == "/cat.png"
    assert request.url.query == b"size=1"
    assert request.headers["host"] == "img.example.com"
    assert request.headers["accept-encoding"] == "identity"
    assert request.extensions["sni_hostname"] == "img.example.com"
    assert "authorization" not in request.headers


async def test_non_default_port_and_ipv6_address():
    net = FakeNet(names={"v6.example.com": ["2606:4700:4700::1111"]})
    await net.intake().from_reference("http://v6.example.com:8080/a.png")
    (request,) = net.requests
    assert request.url.host == "2606:4700:4700::1111"
    assert request.url.port == 8080
    assert request.headers["host"] == "v6.example.com:8080"
    assert "sni_hostname" not in request.extensions


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("http://127.0.0.1/x.png", NOT_PUBLIC),
        ("http://[::1]/x.png", NOT_PUBLIC),
        ("http://[::ffff:127.0.0.1]/x.png", NOT_PUBLIC),
        ("http://10.0.0.5/x.png", NOT_PUBLIC),
        ("http://169.254.169.254/latest/meta-data/", NOT_PUBLIC),
        ("http://0.0.0.0/", NOT_PUBLIC),
        ("http://2130706433/x.png", "not a canonical IP address"),
        ("http://0x7f.1/x.png", "not a canonical IP address"),
        ("http://localhost.internal/x.png", NOT_PUBLIC),
        ("http://metadata.google.internal/computeMetadata/v1/", NOT_PUBLIC),
        ("http://mixed.example.com/x.png", NOT_PUBLIC),
        ("http://nowhere.example/x.png", NOT_PUBLIC),
        ("file:///etc/passwd", "file: URLs are not accepted"),
        ("ftp://img.example.com/x.png", "ftp: URLs are not accepted"),
        ("gopher://img.example.com:70/_x", "gopher: URLs are not accepted"),
        ("http://user:pw@img.example.com/x.png", "must not contain credentials"),
        ("http:///x.png", "not a valid URL|no host"),
    ],
)
async def test_ssrf_targets_are_refused_before_any_request(url, match):
    net = FakeNet(
        names={
            "localhost.internal": ["127.0.0.1"],
            "metadata.google.internal": ["169.254.169.254"],
            "mixed.example.com": [PUBLIC, "10.0.0.7"],
        }
    )
    with pytest.raises(InvalidImage, match=match) as caught:
        await net.intake().from_reference(url)
    assert caught.value.status_code == 400
    assert net.requests == []


async def test_refusals_do_not_tell_a_private_address_from_a_name_that_does_not_resolve():
    """No DNS oracle: the answer is the same whatever the name resolves to, or if it does not."""
    net = FakeNet(
        names={
            "intranet.example.com": ["10.1.2.3"],
            "loop.example.com": ["127.0.0.1"],
            "meta.example.com": ["169.254.169.254"],
            "empty.example.com": [],
        }
    )
    intake = net.intake()
    messages = set()
    for host in ("intranet", "loop", "meta", "empty", "nowhere"):
        with pytest.raises(InvalidImage) as caught:
            await intake.from_reference(f"http://{host}.example.com/x.png")
        messages.add(caught.value.message.replace(f"{host}.example.com", "HOST"))
    assert len(messages) == 1, messages
    (message,) = messages
    for tell in ("private", "loopback", "metadata", "resolved.", "could not", "no address"):
        assert tell not in message
    assert net.requests == []


def _redirect(location, status=302):
    return httpx.Response(status, headers={"location": location})


@pytest.mark.parametrize(
    ("location", "match"),
    [
        ("http://127.0.0.1/secret", NOT_PUBLIC),
        ("http://169.254.169.254/latest/meta-data/iam", NOT_PUBLIC),
        ("http://internal.example.com/admin", NOT_PUBLIC),
        ("file:///etc/passwd", "Only http and https"),
    ],
)
async def test_every_redirect_is_checked_again(location, match):
    net = FakeNet(
        names={"internal.example.com": ["192.168.0.10"]},
        routes={("img.example.com", "/cat.png"): _redirect(location)},
    )
    with pytest.raises(InvalidImage, match=match):
        await net.intake().from_reference("http://img.example.com/cat.png")
    assert len(net.requests) == 1


async def test_relative_redirect_is_resolved_against_the_name_not_the_address():
    net = FakeNet(routes={("img.example.com", "/old.png"): _redirect("/new.png", 301)})
    result = await net.intake().from_reference("https://img.example.com/old.png")
    assert result.format == "PNG"
    first, second = net.requests
    assert second.url.path == "/new.png"
    assert second.headers["host"] == "img.example.com"
    assert net.lookups == ["img.example.com", "img.example.com"]


async def test_dns_answer_is_pinned_per_hop():
    # A rebinding resolver that answers public first and private after: the
    # request must go to the address that was checked, not a fresh lookup.
    answers = iter([[PUBLIC], ["127.0.0.1"]])
    net = FakeNet()

    async def rebinding(host, port):
        net.lookups.append(host)
        return next(answers)

    client = httpx.AsyncClient(transport=httpx.MockTransport(net.handle))
    intake = ImageIntake(MediaSettings(allow_urls=True), http_client=client, resolver=rebinding)
    await intake.from_reference("http://img.example.com/cat.png")
    assert net.lookups == ["img.example.com"]
    assert net.requests[0].url.host == PUBLIC


async def test_redirects_are_capped_at_three():
    routes = {("img.example.com", f"/{i}"): _redirect(f"/{i + 1}") for i in range(10)}
    net = FakeNet(routes=routes)
    await net.intake().from_reference("http://img.example.com/7")  # 7 -> 8 -> 9 -> 10: three hops
    net.requests.clear()
    with pytest.raises(InvalidImage, match="redirected more than 3 times"):
        await net.intake().from_reference("http://img.example.com/0")
    assert len(net.requests) == 4


async def test_allowlist_applies_to_first_url_and_redirects():
    net = FakeNet(
        names={"cdn.example.com": [PUBLIC], "evil.example.net": [PUBLIC]},
        routes={("img.example.com", "/hop"): _redirect("https://evil.example.net/x.png")},
    )
    intake = net.intake(url_allowlist=("*.example.com",))
    assert (await intake.from_reference("http://cdn.example.com/a.png")).format == "PNG"
    with pytest.raises(InvalidImage, match="not on the allow-list"):
        await intake.from_reference("http://evil.example.net/x.png")
    with pytest.raises(InvalidImage, match="evil.example.net: the host is not on the allow-list"):
        await intake.from_reference("http://img.example.com/hop")


async def test_download_stops_as_soon_as_the_size_cap_is_passed():
    sent = []

    async def endless():
        for _ in range(1000):
            sent.append(1)
            yield b"\x00" * 1000

    net = FakeNet(routes={("img.example.com", "/big"): httpx.Response(200, content=endless())})
    with pytest.raises(ImageTooLarge, match="larger than 5000 bytes") as caught:
        await net.intake(max_image_bytes=5_000).from_reference("http://img.example.com/big")
    assert caught.value.status_code == 413
    assert len(sent) <= 7


async def test_declared_oversize_is_refused_without_reading():
    big = httpx.Response(200, headers={"content-length": "999999999"}, content=b"")
    net = FakeNet(routes={("img.example.com", "/big"): big})
    with pytest.raises(ImageTooLarge, match="999999999 bytes"):
        await net.intake().from_reference("http://img.example.com/big")


async def test_compressed_bodies_are_refused():
    gz = httpx.Response(200, headers={"content-encoding": "gzip"}, content=b"\x1f\x8b")
    net = FakeNet(routes={("img.example.com", "/gz"): gz})
    with pytest.raises(InvalidImage, match="compressed body"):
        await net.intake().from_reference("http://img.example.com/gz")


async def test_error_statuses_are_reported():
    net = FakeNet(routes={("img.example.com", "/missing"): httpx.Response(404)})
    with pytest.raises(InvalidImage, match="answered HTTP 404"):
        await net.intake().from_reference("http://img.example.com/missing")


async def test_fetched_bytes_go_through_type_detection():
    html = httpx.Response(200, headers={"content-type": "image/png"}, content=b"<html><script>x</script>")
    net = FakeNet(routes={("img.example.com", "/fake.png"): html})
    with pytest.raises(Exception, match="HTML images are not accepted") as caught:
        await net.intake().from_reference("http://img.example.com/fake.png")
    assert caught.value.status_code == 415


async def test_transport_errors_become_client_errors():
    def fail(request):
        raise httpx.ConnectError("connection refused", request=request)

    def slow(request):
        raise httpx.ReadTimeout("timed out", request=request)

    net = FakeNet(routes={("img.example.com", "/down"): fail, ("img.example.com", "/slow"): slow})
    with pytest.raises(InvalidImage, match="could not be fetched \\(ConnectError\\)"):
        await net.intake().from_reference("http://img.example.com/down")
    with pytest.raises(InvalidImage, match="did not answer in time"):
        await net.intake().from_reference("http://img.example.com/slow")


async def test_a_slow_drip_is_cut_off_by_the_overall_deadline():
    async def drip():
        while True:
            await asyncio.sleep(0.02)
            yield b"\x00"

    net = FakeNet(routes={("img.example.com", "/drip"): httpx.Response(200, content=drip())})
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(InvalidImage, match="took longer than 0.2 s"):
        await net.intake(fetch_timeout_s=0.1).from_reference("http://img.example.com/drip")
    assert loop.time() - started < 1.0


async def test_system_resolver_resolves_literals_without_network():
    assert await system_resolver("127.0.0.1", 80) == ["127.0.0.1"]


async def test_fetch_client_keeps_no_cookies_and_ignores_the_environment():
    client = create_fetch_client(MediaSettings(fetch_timeout_s=3))
    async with client:
        assert client.follow_redirects is False
        assert client.trust_env is False
        assert client.timeout.connect == 3
        response = httpx.Response(
            200,
            headers={"set-cookie": "track=1; Domain=img.example.com; Path=/"},
            request=httpx.Request("GET", "https://img.example.com/"),
        )
        client.cookies.extract_cookies(response)
        assert len(client.cookies.jar) == 0


async def test_real_transport_connects_to_the_checked_address_with_the_name_as_host(monkeypatch):
    """Through httpx's real transport to a loopback server (the gate is opened for loopback only here)."""
    import glimpse.media.fetch as fetch_module

    seen: list[bytes] = []

    async def serve(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(PNG) + PNG)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    monkeypatch.setattr(fetch_module, "refusal_reason", lambda address: None)

    async def resolve(host, port):
        return ["127.0.0.1"]

    settings = MediaSettings(allow_urls=True, fetch_timeout_s=5)
    async with server, create_fetch_client(settings) as client:
        intake = ImageIntake(settings, http_client=client, resolver=resolve)
        result = await intake.from_reference(f"http://img.example.com:{port}/cat.png")
    assert result.format == "PNG"
    (head,) = seen
    assert head.startswith(b"GET /cat.png HTTP/1.1\r\n")
    assert f"host: img.example.com:{port}\r\n".encode() in head.lower()
    assert b"connection: close\r\n" in head.lower()
