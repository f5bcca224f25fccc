import ipaddress

import pytest

from glimpse.media.addresses import host_allowed, is_public_address, literal_address, refusal_reason


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "metadata"),
        ("169.254.1.1", "link-local"),
        ("168.63.129.16", "metadata"),
        ("100.100.100.200", "metadata"),
        ("100.64.0.1", "not a public address"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fc00::1", "private"),
        ("fd00:ec2::254", "metadata"),
        ("ff02::1", "multicast"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "metadata"),
        ("2002:7f00:1::", "loopback"),  # 6to4 wrapping 127.0.0.1
        ("2002:a00:1::", "private"),  # 6to4 wrapping 10.0.0.1
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        ("2001:db8::1", "private"),  # documentation
    ],
)
def test_non_public_addresses_are_refused_with_a_reason(text, reason):
    address = ipaddress.ip_address(text)
    found = refusal_reason(address)
    assert found is not None
    assert reason in found
    assert not is_public_address(address)


@pytest.mark.parametrize("text", ["8.8.8.8", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass(text):
    assert refusal_reason(ipaddress.ip_address(text)) is None


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", ipaddress.ip_address("127.0.0.1")),
        ("::1", ipaddress.ip_address("::1")),
        ("[::1]", ipaddress.ip_address("::1")),
        ("example.com", None),
        ("localhost", None),
    ],
)
def test_literal_addresses(host, expected):
    assert literal_address(host) == expected


@pytest.mark.parametrize(
    "host", ["2130706433", "0x7f.1", "0x7f000001", "127.1", "017700000001", "0177.0.0.1"]
)
def test_non_canonical_numeric_hosts_are_rejected(host):
    with pytest.raises(ValueError, match="non-canonical"):
        literal_address(host)


@pytest.mark.parametrize(
    ("host", "allowlist", "allowed"),
    [
        ("anything.example", (), True),
        ("img.example.com", ("img.example.com",), True),
        ("IMG.Example.COM.", ("img.example.com",), True),
        ("other.example.com", ("img.example.com",), False),
        ("a.cdn.example.com", ("*.example.com",), True),
        ("example.com", ("*.example.com",), False),
        ("evilexample.com", ("*.example.com",), False),
        ("example.com.evil.net", ("*.example.com", "example.com"), False),
        ("example.com", ("*.example.com", "example.com"), True),
    ],
)
def test_allowlist_matching(host, allowlist, allowed):
    assert host_allowed(host, allowlist) is allowed
