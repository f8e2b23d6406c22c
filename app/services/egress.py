"""Where the service may send a webhook: never to its own machine, the local network or a
cloud metadata endpoint unless the admin allowed that host by name (FSDI_PUSH_ALLOW_HOSTS).

The check runs twice: on the URL when it is configured (a clear 422), and on the addresses
the name resolves to at each delivery, connecting to the address that was checked (so a
name re-pointed at an internal address after the first check, DNS rebinding, gets nowhere).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class EgressRefused(ValueError):
    """The URL or its resolved address is not a place this service sends to."""


@dataclass(frozen=True)
class Allow:
    """FSDI_PUSH_ALLOW_HOSTS: exact host names, and addresses or networks (CIDR)."""

    names: frozenset[str]
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    @classmethod
    def parse(cls, entries: Iterable[str]) -> Allow:
        names, nets = set(), []
        for e in (x.strip() for x in entries):
            if not e:
                continue
            try:
                nets.append(ipaddress.ip_network(e.strip("[]"), strict=False))
            except ValueError:
                names.add(e.lower().rstrip("."))
        return cls(frozenset(names), tuple(nets))

    def address_ok(self, ip: IPAddress) -> bool:
        return any(ip in n for n in self.networks if n.version == ip.version)


def _plain(ip: IPAddress) -> IPAddress:
    return ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip


def internal(ip: IPAddress) -> bool:
    """Loopback, private, link-local (cloud metadata), shared, reserved, multicast..."""
    ip = _plain(ip)
    return not ip.is_global or ip.is_multicast


def parse_url(url: str) -> SplitResult:
    """Scheme http(s), a host, and no credentials (they would be shown and audited)."""
    u = urlsplit(url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise EgressRefused("webhook_url must be an http:// or https:// URL with a host")
    if u.username is not None or u.password is not None:
        raise EgressRefused("webhook_url must not carry credentials (user:password@); "
                            "use the signing secret instead")
    try:
        u.port  # noqa: B018 - raises on a malformed port
    except ValueError as exc:
        raise EgressRefused("webhook_url has an invalid port") from exc
    return u


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` stands for (numeric forms such as 2130706433 or 0x7f000001
    included: the resolver reads them as the system's clients would)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


def vet(url: str, allow: Allow, must_resolve: bool = False) -> tuple[SplitResult, IPAddress | None]:
    """The URL's parts and an address it may be sent to (None: the name does not resolve
    now and `must_resolve` is false). Raises EgressRefused for a forbidden target."""
    u = parse_url(url)
    host = (u.hostname or "").lower().rstrip(".")
    port = u.port or (443 if u.scheme == "https" else 80)
    by_name = host in allow.names
    try:
        addrs = resolve(host, port)
    except (OSError, UnicodeError) as exc:
        if must_resolve:
            raise EgressRefused(f"cannot resolve {host!r}") from exc
        return u, None
    for ip in addrs:
        if internal(ip) and not by_name and not allow.address_ok(_plain(ip)):
            raise EgressRefused(
                f"{host!r} resolves to {ip}, an internal address (loopback, private, "
                "link-local, multicast or metadata); allow it with FSDI_PUSH_ALLOW_HOSTS")
    return u, addrs[0]


def deliverable(url: str, allow: Allow) -> tuple[SplitResult, IPAddress]:
    """`vet` at delivery time: the name must resolve now, to an allowed address."""
    u, ip = vet(url, allow, must_resolve=True)
    if ip is None:  # vet raises instead when must_resolve; kept for the type checker
        raise EgressRefused(f"cannot resolve {u.hostname!r}")
    return u, ip


def pinned(u: SplitResult, ip: IPAddress) -> tuple[str, dict[str, str], dict[str, str]]:
    """The request URL aimed at the checked address, the Host header, and the TLS server
    name to present (certificates are still checked against the host name)."""
    literal = f"[{ip}]" if ip.version == 6 else str(ip)
    netloc = literal + (f":{u.port}" if u.port else "")
    url = u._replace(netloc=netloc).geturl()
    host_header = u.hostname or ""
    if ":" in host_header:
        host_header = f"[{host_header}]"
    if u.port:
        host_header += f":{u.port}"
    ext = {"sni_hostname": u.hostname or ""} if u.scheme == "https" else {}
    return url, {"Host": host_header}, ext
