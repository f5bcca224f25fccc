"""Which hosts and addresses an image URL may reach.

Server-side request forgery is decided by the address actually connected to,
not by the name in the URL: names can resolve anywhere, and numbers can be
spelled many ways (``2130706433``, ``0x7f.1`` and ``[::ffff:127.0.0.1]`` all mean
loopback). So the rule is: only globally routable unicast addresses, checked
after resolution, with IPv4 embedded in IPv6 checked as the IPv4 it carries,
and non-canonical numeric host spellings refused outright.
"""

from __future__ import annotations

import ipaddress
import socket

__all__ = ["IPAddress", "host_allowed", "is_public_address", "literal_address", "refusal_reason"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cloud metadata and host-agent endpoints. Most are already non-global; Azure's
# wireserver (168.63.129.16) is a public address, so the list is needed.
_METADATA = frozenset(
    ipaddress.ip_address(text)
    for text in (
        "169.254.169.254",
        "169.254.170.2",
        "168.63.129.16",
        "100.100.100.200",
        "fd00:ec2::254",
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def literal_address(host: str) -> IPAddress | None:
    """The address a host names literally, or None for a DNS name.

    Raises ``ValueError`` for numeric spellings that the C resolver would accept
    but that are not canonical dotted-quad or IPv6 text (decimal, octal, hex,
    short forms): they exist mostly to slip past filters.
    """
    text = host.strip("[]")
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    try:
        socket.inet_aton(text)
    except OSError:
        return None
    raise ValueError(f"non-canonical numeric host {host!r}")


def refusal_reason(address: IPAddress) -> str | None:
    """Why this address may not be fetched from, or None if it may."""
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        return refusal_reason(embedded)
    if address in _METADATA:
        return "a cloud metadata address"
    for reason, flag in (
        ("a loopback address", address.is_loopback),
        ("a link-local address", address.is_link_local),
        ("a multicast address", address.is_multicast),
        ("an unspecified address", address.is_unspecified),
        ("a reserved address", address.is_reserved),
        ("a private address", address.is_private),
    ):
        if flag:
            return reason
    if not address.is_global:
        return "not a public address"
    return None


def is_public_address(address: IPAddress) -> bool:
    return refusal_reason(address) is None


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def host_allowed(host: str, allowlist: tuple[str, ...]) -> bool:
    """Exact host names, or ``*.suffix`` for any name below ``suffix`` (not ``suffix`` itself).

    An empty list allows every host (addresses are still checked).
    """
    if not allowlist:
        return True
    name = host.lower().rstrip(".")
    for entry in allowlist:
        pattern = entry.strip().lower().rstrip(".")
        if pattern.startswith("*."):
            if name.endswith(pattern[1:]) and len(name) > len(pattern) - 1:
                return True
        elif name == pattern:
            return True
    return False
