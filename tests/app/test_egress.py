"""Webhook egress rules (finding F): the address is checked when the URL is set and again,
on what the name resolves to then, at every delivery, which goes to that checked address."""

from __future__ import annotations

import ipaddress

import pytest

from app.services import egress
from app.services.egress import Allow, EgressRefused, pinned, vet


def fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> None:
    monkeypatch.setattr(egress, "resolve", lambda host, port: [
        ipaddress.ip_address(a) for a in answers[host]])


def test_a_name_re_pointed_inside_is_refused_at_delivery(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    fake_dns(monkeypatch, {"hooks.example.com": ["93.184.216.34"]})
    parts, ip = vet("https://hooks.example.com:8443/in", Allow.parse([]))
    assert str(ip) == "93.184.216.34"
    url, host, ext = pinned(parts, ip)  # type: ignore[arg-type]
    assert url == "https://93.184.216.34:8443/in"
    assert host == {"Host": "hooks.example.com:8443"}
    assert ext == {"sni_hostname": "hooks.example.com"}
    fake_dns(monkeypatch, {"hooks.example.com": ["93.184.216.34", "127.0.0.1"]})  # rebinding
    with pytest.raises(EgressRefused, match="internal"):
        vet("https://hooks.example.com:8443/in", Allow.parse([]), must_resolve=True)


def test_allow_list_by_name_or_network(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dns(monkeypatch, {"mes.plant.local": ["10.20.1.5"], "other.local": ["10.30.0.1"]})
    allow = Allow.parse(["mes.plant.local", "10.40.0.0/16", " "])
    assert vet("http://mes.plant.local/x", allow)[1] == ipaddress.ip_address("10.20.1.5")
    with pytest.raises(EgressRefused):
        vet("http://other.local/x", allow)
    fake_dns(monkeypatch, {"10.40.2.2": ["10.40.2.2"]})
    assert vet("http://10.40.2.2/x", allow)[1] is not None


@pytest.mark.parametrize("ip", ["127.0.0.1", "::1", "169.254.169.254", "10.0.0.1", "100.64.0.1",
                                "fd00:ec2::254", "::ffff:192.168.1.1", "239.1.1.1", "0.0.0.0"])
def test_internal_addresses(ip: str) -> None:
    assert egress.internal(ipaddress.ip_address(ip))


def test_public_addresses_pass_and_unresolvable_names_wait_for_delivery() -> None:
    assert not egress.internal(ipaddress.ip_address("93.184.216.34"))
    parts, ip = vet("http://no-such-host.invalid/x", Allow.parse([]))
    assert ip is None and parts.hostname == "no-such-host.invalid"
    with pytest.raises(EgressRefused, match="resolve"):
        vet("http://no-such-host.invalid/x", Allow.parse([]), must_resolve=True)
