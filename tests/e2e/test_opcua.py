"""The OPC UA server against a real asyncua client on loopback (a PLC's view): a
classification's verdict and counters arrive within 100 ms of the result's commit as one
consistent set; wrong, revoked and anonymous sessions are refused; a scoped key reads only
its groups; Basic256Sha256 Sign & Encrypt with the certificate kept in DATA_DIR."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.imagegen import sample
from bench.server import Server, free_port

asyncua = pytest.importorskip("asyncua")
from asyncua import Client, ua  # noqa: E402
from asyncua.crypto.cert_gen import setup_self_signed_certificate  # noqa: E402
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID  # noqa: E402

KEY = "opcua-admin-key-0123456789"
H = {"Authorization": f"Bearer {KEY}"}
LAST = ("ResultId", "Time", "Verdict", "Ok", "Label", "Unknown", "Score", "AnomalyScore",
        "Threshold")
COUNTERS = ("Inspected", "Ok", "Defect", "Unknown")


@pytest.fixture(scope="module")
def line(tmp_path_factory: pytest.TempPathFactory, model_cache: Path
         ) -> Iterator[tuple[Server, str]]:
    """One service with OPC UA on, two groups: `line` (good parts + a defect class) and
    `other` (two defect classes, no good parts)."""
    tmp = tmp_path_factory.mktemp("opcua")
    url = f"opc.tcp://127.0.0.1:{free_port()}/fsdi"
    srv = Server(tmp / "data", {"FSDI_ADMIN_KEY": KEY, "FSDI_OPCUA_URL": url,
                                "FSDI_MODEL_CACHE_DIR": str(model_cache)}).start()
    with httpx.Client(base_url=srv.url, headers=H, timeout=120) as c:
        for group, name, kind, surf, defect in (
                ("line", "ok", "good", "brick", None),
                ("line", "scratch", "defect", "brick", "scratch"),
                ("other", "a", "defect", "grass", "stain"),
                ("other", "b", "defect", "gravel", "crack")):
            cid = c.post("/api/v1/classes", json={"name": name, "group": group,
                                                  "kind": kind}).json()["id"]
            n = 12 if kind == "good" else 3
            r = c.post(f"/api/v1/classes/{cid}/images", files=[
                ("files", (f"{name}{i}.png", sample(surf, defect, i), "image/png"))
                for i in range(n)])
            assert r.status_code == 201, r.text
    yield srv, url
    srv.stop()


def key(srv: Server, role: str, groups: list[str] | None = None) -> tuple[int, str]:
    body: dict[str, Any] = {"role": role, "label": f"plc-{role}"}
    if groups is not None:
        body["groups"] = groups
    r = httpx.post(f"{srv.url}/api/v1/keys", headers=H, json=body)
    assert r.status_code == 201, r.text
    return r.json()["id"], r.json()["key"]


def classify(srv: Server, group: str, seed: int, defect: str | None = "scratch") -> dict:
    r = httpx.post(f"{srv.url}/api/v1/classify", params={"group": group}, headers=H,
                   timeout=60, files=[("files", (f"q{seed}.png",
                                                 sample("brick", defect, 900 + seed),
                                                 "image/png"))])
    assert r.status_code == 200, r.text
    return r.json()["results"][0]  # type: ignore[no-any-return]


async def nodes(client: Client, group: str) -> dict[str, Any]:
    ns = await client.get_namespace_index("urn:fsdi")
    out = {f"LastResult/{n}": client.get_node(f"ns={ns};s=FSDI/Groups/{group}/LastResult/{n}")
           for n in LAST}
    out.update({f"Counters/{n}": client.get_node(f"ns={ns};s=FSDI/Groups/{group}/Counters/{n}")
                for n in COUNTERS})
    return out


def connect(url: str, password: str | None, user: str = "plc") -> Client:
    c = Client(url, timeout=10)
    if password is not None:
        c.set_user(user)
        c.set_password(password)
    return c


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_address_space_by_browse_names(line: tuple[Server, str]) -> None:
    srv, url = line
    _, machine = key(srv, "machine")

    async def go() -> None:
        async with connect(url, machine) as c:
            ns = await c.get_namespace_index("urn:fsdi")
            fsdi = await c.nodes.objects.get_child([f"{ns}:FSDI"])
            assert await (await fsdi.get_child([f"{ns}:Ready"])).read_value() is True
            version = await (await fsdi.get_child([f"{ns}:ModelVersion"])).read_value()
            answer = await asyncio.to_thread(
                httpx.post, f"{srv.url}/api/v1/classify", params={"group": "line"},
                headers=H, timeout=60,
                files=[("files", ("v.png", sample("brick", None, 1), "image/png"))])
            assert version and version == answer.json()["model"]["version"]
            groups = await fsdi.get_child([f"{ns}:Groups"])
            deadline = time.monotonic() + 3  # a new group appears within a second
            while True:
                names = {(await g.read_browse_name()).Name
                         for g in await groups.get_children()}
                if {"line", "other"} <= names or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            assert {"line", "other"} <= names
            g = await groups.get_child([f"{ns}:line"])
            last = await g.get_child([f"{ns}:LastResult"])
            assert {(await n.read_browse_name()).Name
                    for n in await last.get_children()} == set(LAST)
            counters = await g.get_child([f"{ns}:Counters"])
            kinds = {(await n.read_browse_name()).Name: await n.read_data_type_as_variant_type()
                     for n in await counters.get_children()}
            assert kinds == dict.fromkeys(COUNTERS, ua.VariantType.UInt64)
            rid = await last.get_child([f"{ns}:ResultId"])
            assert await rid.read_data_type_as_variant_type() == ua.VariantType.Int64
            # read-only: a PLC cannot overwrite a verdict
            verdict = await last.get_child([f"{ns}:Verdict"])
            with pytest.raises(ua.UaError):
                await verdict.write_value("ok")
    run(go())


def test_a_subscriber_sees_each_result_within_100_ms_as_one_set(line: tuple[Server, str]
                                                                 ) -> None:
    srv, url = line
    _, machine = key(srv, "machine")

    async def go() -> None:
        async with connect(url, machine) as c:
            ns_nodes = await nodes(c, "line")
            by_node = {n.nodeid: name for name, n in ns_nodes.items()}
            seen: dict[str, Any] = {}
            changed = asyncio.Event()
            # (arrival, name, value, source timestamp): one set shares one timestamp
            log: list[tuple[float, str, Any, Any]] = []

            class Handler:
                def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
                    name = by_node[node.nodeid]
                    seen[name] = val
                    log.append((time.time(), name, val,
                                data.monitored_item.Value.SourceTimestamp))
                    changed.set()

            sub = await c.create_subscription(10, Handler())
            await sub.subscribe_data_change(list(ns_nodes.values()))
            await asyncio.sleep(0.5)  # the initial values
            before = {k: v for k, v in seen.items() if k.startswith("Counters/")}
            for i in range(6):
                log.clear()
                defect = "scratch" if i % 2 else None
                r = await asyncio.to_thread(classify, srv, "line", i, defect)
                t_answer = time.time()
                deadline = time.monotonic() + 2
                while seen.get("LastResult/ResultId") != r["id"] and \
                        time.monotonic() < deadline:
                    changed.clear()
                    with contextlib_suppress_timeout():
                        await asyncio.wait_for(changed.wait(), 0.5)
                assert seen["LastResult/ResultId"] == r["id"]
                await asyncio.sleep(0.15)  # every notification of this result is in
                # the commit happens before the answer: the set arrived within 100 ms of
                # the answer, so of the commit
                t_arrived, _, _, stamp = next(e for e in log if e[1] == "LastResult/ResultId"
                                              and e[2] == r["id"])
                assert t_arrived - t_answer < 0.1, t_arrived - t_answer
                expected = {
                    "LastResult/Verdict": r["verdict"], "LastResult/Ok": r["verdict"] == "ok",
                    "LastResult/Label": r["label"] or "", "LastResult/Unknown": r["unknown"],
                    "LastResult/Score": pytest.approx(r["score"]),
                    "LastResult/AnomalyScore": pytest.approx(r["anomaly"]["score"]),
                    "LastResult/Threshold": pytest.approx(r["anomaly"]["threshold"]),
                    "Counters/Inspected": before["Counters/Inspected"] + i + 1}
                for name, want in expected.items():
                    assert seen[name] == want, name
                # one set: every value notified with this result's timestamp is this
                # result's (never its id beside another result's verdict)
                same_set = {name: val for _, name, val, ts in log if ts == stamp}
                assert "Counters/Inspected" in same_set
                for name, val in same_set.items():
                    if name in expected:
                        assert val == expected[name], name
            counts = {k: v for k, v in seen.items() if k.startswith("Counters/")}
            assert counts["Counters/Inspected"] - before["Counters/Inspected"] == 6
            assert (counts["Counters/Ok"] + counts["Counters/Defect"]
                    - before["Counters/Ok"] - before["Counters/Defect"]) == 6
            await sub.delete()
    run(go())


class contextlib_suppress_timeout:  # noqa: N801 - reads as the contextlib helper it is
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return exc[0] is TimeoutError


def test_reads_under_load_are_always_one_result(line: tuple[Server, str]) -> None:
    """A PLC polling the whole LastResult in one Read while results are committed
    concurrently never reads fields of two results."""
    srv, url = line
    _, machine = key(srv, "machine")
    results: dict[int, dict] = {}

    async def go() -> list[list[Any]]:
        async with connect(url, machine) as c:
            n = await nodes(c, "line")
            order = [n[f"LastResult/{k}"] for k in ("ResultId", "Verdict", "Label", "Score")]

            async def fire(i: int) -> None:
                r = await asyncio.to_thread(classify, srv, "line", 100 + i,
                                            "scratch" if i % 3 else None)
                results[r["id"]] = r

            reads: list[list[Any]] = []
            load = asyncio.gather(*(fire(i) for i in range(24)))
            while not load.done():
                reads.append(await c.read_values(order))
                await asyncio.sleep(0)
            await load
            reads.append(await c.read_values(order))
            return reads

    reads = run(go())
    checked = 0
    for rid, verdict, label, score in reads:
        if rid in results:
            r = results[rid]
            assert (verdict, label) == (r["verdict"], r["label"] or ""), (rid, verdict, label)
            assert score == pytest.approx(r["score"])
            checked += 1
    assert checked > 0
    assert reads[-1][0] == max(results)  # LastResult only moves forward


def test_sessions_need_a_live_key(line: tuple[Server, str]) -> None:
    srv, url = line
    kid, machine = key(srv, "machine")

    async def refused(password: str | None) -> None:
        c = connect(url, password)
        with pytest.raises(Exception) as exc:  # noqa: PT011 - asyncua raises several kinds
            await c.connect()
        await c.disconnect() if c.uaclient.protocol else None
        assert "Bad" in repr(exc.value) or isinstance(exc.value, ua.UaError)

    async def go() -> None:
        await refused(None)  # anonymous
        await refused("not-a-key")
        async with connect(url, machine):  # the live key
            pass
        # a session open while its key is revoked ends within the sweep (5 s)
        async with connect(url, machine) as c:
            node = (await nodes(c, "line"))["LastResult/Verdict"]
            r = await asyncio.to_thread(httpx.delete, f"{srv.url}/api/v1/keys/{kid}",
                                        headers=H)
            assert r.status_code == 204, r.text
            deadline = time.monotonic() + 15
            closed = False
            while time.monotonic() < deadline and not closed:
                try:
                    await node.read_value()
                    await asyncio.sleep(0.5)
                except Exception:
                    closed = True
            assert closed
        await refused(machine)  # and a new one is refused
    run(go())


def test_a_scoped_key_reads_only_its_groups(line: tuple[Server, str]) -> None:
    srv, url = line
    _, scoped = key(srv, "machine", ["other"])
    classify(srv, "other", 7, None)

    async def go() -> None:
        async with connect(url, scoped) as c:
            mine = await nodes(c, "other")
            assert await mine["LastResult/ResultId"].read_value() > 0
            theirs = await nodes(c, "line")
            with pytest.raises(ua.UaError):
                await theirs["LastResult/Verdict"].read_value()
            sub = await c.create_subscription(50, None)
            with pytest.raises(ua.UaError):
                await sub.subscribe_data_change(theirs["LastResult/Verdict"])
            # a group without good parts: no verdict, no anomaly score
            assert await mine["LastResult/Verdict"].read_value() == ""
            assert math.isnan(await mine["LastResult/AnomalyScore"].read_value())
    run(go())


def test_sign_and_encrypt_with_the_kept_certificate(line: tuple[Server, str],
                                                    tmp_path: Path) -> None:
    srv, url = line
    _, machine = key(srv, "machine")
    cert_file = srv.data_dir / "opcua" / "server-cert.der"
    assert cert_file.is_file() and (srv.data_dir / "opcua" / "server-key.pem").is_file()
    assert (srv.data_dir / "opcua" / "server-key.pem").stat().st_mode & 0o077 == 0
    made = cert_file.read_bytes()

    async def go() -> None:
        ck, cc = tmp_path / "plc-key.pem", tmp_path / "plc-cert.der"
        await setup_self_signed_certificate(ck, cc, "urn:plc:test", "localhost",
                                            [ExtendedKeyUsageOID.CLIENT_AUTH],
                                            {"commonName": "plc"})
        c = connect(url, machine)
        await c.set_security(SecurityPolicyBasic256Sha256, str(cc), str(ck),
                             server_certificate=str(cert_file),
                             mode=ua.MessageSecurityMode.SignAndEncrypt)
        async with c:
            n = await nodes(c, "line")
            assert await n["LastResult/ResultId"].read_value() >= 0
        endpoints = await Client(url).connect_and_get_server_endpoints()
        modes = {(e.SecurityPolicyUri.rsplit("#", 1)[1], e.SecurityMode) for e in endpoints}
        assert ("Basic256Sha256", ua.MessageSecurityMode.SignAndEncrypt) in modes
    run(go())
    # kept: a restart serves the same certificate
    srv.stop()
    srv.start()
    assert cert_file.read_bytes() == made


def test_off_by_default(tmp_path: Path, model_cache: Path) -> None:
    """Without FSDI_OPCUA_URL no OPC UA server starts (no certificate is made)."""
    srv = Server(tmp_path / "data", {"FSDI_ADMIN_KEY": KEY,
                                     "FSDI_MODEL_CACHE_DIR": str(model_cache)}).start()
    try:
        assert httpx.get(f"{srv.url}/readyz").status_code == 200
    finally:
        srv.stop()
    assert not (tmp_path / "data" / "opcua").exists()
    assert "OPC UA server on" not in srv.log.read_text()


def test_anonymous_and_encrypted_only_when_asked(tmp_path: Path, model_cache: Path) -> None:
    url = f"opc.tcp://127.0.0.1:{free_port()}/fsdi"
    srv = Server(tmp_path / "data", {"FSDI_ADMIN_KEY": KEY, "FSDI_OPCUA_URL": url,
                                     "FSDI_OPCUA_ALLOW_ANONYMOUS": "true",
                                     "FSDI_OPCUA_ENCRYPTED_ONLY": "true",
                                     "FSDI_MODEL_CACHE_DIR": str(model_cache)}).start()
    try:
        async def go() -> None:
            endpoints = await Client(url).connect_and_get_server_endpoints()
            assert {e.SecurityMode for e in endpoints} == {
                ua.MessageSecurityMode.SignAndEncrypt}
            with pytest.raises(Exception):  # noqa: B017, PT011 - no None endpoint left
                async with connect(url, None):
                    pass
            ck, cc = tmp_path / "plc-key.pem", tmp_path / "plc-cert.der"
            await setup_self_signed_certificate(ck, cc, "urn:plc:test", "localhost",
                                                [ExtendedKeyUsageOID.CLIENT_AUTH],
                                                {"commonName": "plc"})
            c = Client(url, timeout=10)  # anonymous, encrypted
            await c.set_security(
                SecurityPolicyBasic256Sha256, str(cc), str(ck),
                server_certificate=str(srv.data_dir / "opcua" / "server-cert.der"),
                mode=ua.MessageSecurityMode.SignAndEncrypt)
            async with c:
                ns = await c.get_namespace_index("urn:fsdi")
                ready = c.get_node(f"ns={ns};s=FSDI/Ready")
                deadline = time.monotonic() + 5  # up to STATE_S after /readyz
                while not await ready.read_value() and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
                assert await ready.read_value() is True
        run(go())
    finally:
        srv.stop()
