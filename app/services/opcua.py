"""The OPC UA server for PLCs (CONTRACT.md, "Connect the line"), off unless FSDI_OPCUA_URL.

Address space (namespace `urn:fsdi`, string node ids equal to the browse path, e.g.
`ns=<urn:fsdi>;s=FSDI/Groups/line-1/LastResult/Verdict`):

    Objects/FSDI/ModelVersion  String   the served model version
                 Ready         Boolean  the service is loaded and classifies
                 Groups/<g>/LastResult/{ResultId, Time, Verdict, Ok, Label, Unknown,
                                        Score, AnomalyScore, Threshold}
                 Groups/<g>/Counters/{Inspected, Ok, Defect, Unknown}   UInt64, since start

A result is published after its transaction commits, on the event loop, as one set: every
value is stored before any subscriber is told (a Read between two notifications sees the
whole new set), and with a publishing interval above zero the changes leave in one
notification message. LastResult only moves forward (a slower request finishing after a
newer result of its group counts but does not replace it). Each replica serves the
results it made: see README, "Connect the line".

Sessions: anonymous only when FSDI_OPCUA_ALLOW_ANONYMOUS; otherwise a user name (any) and
a live FSDI key as the password, role machine or above, a scoped key reaching only its
groups' nodes. Keys revoked meanwhile end their sessions within SWEEP_S. Nothing is
writable. Endpoints: None (the password still travels encrypted with the server's
certificate) and Basic256Sha256 Sign & Encrypt; FSDI_OPCUA_ENCRYPTED_ONLY keeps the second
alone. The certificate is made on first start under DATA_DIR/opcua and kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.services.keys import Principal, authenticate, env_admin, hash_key
from app.services.scope import reaches

if TYPE_CHECKING:
    from asyncua import Server, ua

    from app.schemas import Result
    from app.services.runtime import Runtime

log = logging.getLogger("fsdi.opcua")

NAMESPACE = "urn:fsdi"
SWEEP_S = 5.0  # how often open sessions are checked against revoked keys
STATE_S = 0.2  # how often Ready, ModelVersion and the group list are refreshed
LAST_RESULT = ("ResultId", "Time", "Verdict", "Ok", "Label", "Unknown", "Score",
               "AnomalyScore", "Threshold")
COUNTERS = ("Inspected", "Ok", "Defect", "Unknown")
# Requests that only name nodes to read or watch; a scoped key's are checked node by node.
_READS = {"ReadRequest": "ReadParameters", "BrowseRequest": "BrowseParameters",
          "CreateMonitoredItemsRequest": "CreateMonitoredItemsParameters",
          "HistoryReadRequest": "HistoryReadParameters",
          "RegisterNodesRequest": "RegisterNodesParameters"}
# What a session may ask at all (no Write, Call, AddNodes, ...).
_ALLOWED = ("CreateSessionRequest", "CloseSessionRequest", "ActivateSessionRequest",
            "GetEndpointsRequest", "FindServersRequest", "TranslateBrowsePathsToNodeIdsRequest",
            "BrowseNextRequest", "CreateSubscriptionRequest", "ModifySubscriptionRequest",
            "DeleteSubscriptionsRequest", "TransferSubscriptionsRequest",
            "ModifyMonitoredItemsRequest", "DeleteMonitoredItemsRequest", "PublishRequest",
            "RepublishRequest", "CloseSecureChannelRequest", "SetMonitoringModeRequest",
            "SetPublishingModeRequest", "UnregisterNodesRequest", *_READS)


def _group_of(node_id: Any) -> str | None:
    """The group a node belongs to (None: not a group's node)."""
    ident = getattr(node_id, "Identifier", None)
    if not isinstance(ident, str) or not ident.startswith("FSDI/Groups/"):
        return None
    return ident.split("/")[2]


def _node_ids(params: Any) -> list[Any]:
    """Every node a read-like request names."""
    for name in ("NodesToRead", "NodesToBrowse", "ItemsToCreate", "NodesToRegister"):
        items = getattr(params, name, None)
        if items is not None:
            return [getattr(getattr(i, "ItemToMonitor", i), "NodeId", i) for i in items]
    return []


def _make_user_class() -> type:
    from asyncua.crypto.permission_rules import User

    @dataclass
    class KeyUser(User):  # type: ignore[misc]
        """A session opened with an FSDI key (digest kept to notice its revocation)."""
        digest: str = ""
        principal: Principal | None = None

    return KeyUser


def _make_rules(ns: int) -> Any:
    from asyncua import ua
    from asyncua.crypto.permission_rules import PermissionRuleset, UserRole
    from asyncua.ua.ua_binary import struct_from_binary

    allowed = {ua.NodeId(getattr(ua.ObjectIds, f"{n}_Encoding_DefaultBinary")): n
               for n in _ALLOWED}
    params = {n: getattr(ua, p) for n, p in _READS.items()}

    class ScopeRules(PermissionRuleset):  # type: ignore[misc]
        """Read-only for everyone; a scoped key reads and watches its own groups only."""

        def check_validity(self, user: Any, action_type_id: Any, body: Any) -> bool:
            name = allowed.get(action_type_id)
            if name is None or user is None or user.role == UserRole.Admin:
                return name is not None  # Admin: asyncua's own remote admin, never made here
            who = getattr(user, "principal", None)
            if name not in params or who is None or who.groups is None:
                return True
            try:
                request = struct_from_binary(params[name], body.copy())
            except Exception:
                return False
            for node in _node_ids(request):
                g = _group_of(node) if getattr(node, "NamespaceIndex", None) == ns else None
                if g is not None and not reaches(who, g):
                    return False
            return True

    return ScopeRules()


@dataclass
class _GroupNodes:
    last: dict[str, Any]  # browse name -> NodeId
    counters: dict[str, Any]
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    last_id: int = 0


class LineServer:
    """The OPC UA server, run on the service's event loop."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.settings = rt.settings
        self.server: Server | None = None
        self.ns = 0
        self._groups: dict[str, _GroupNodes] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._state: dict[str, Any] = {}
        self._folder: Any = None
        self._making = asyncio.Lock()

    # -- start / stop ---------------------------------------------------------------------

    async def start(self) -> None:
        from asyncua import Server, ua
        from asyncua.crypto.permission_rules import UserRole

        for name in ("asyncua", "asyncua.server", "asyncua.server.uaprocessor"):
            logging.getLogger(name).setLevel(logging.WARNING)
        url = self.settings.opcua_url
        if not url:
            raise ValueError("FSDI_OPCUA_URL is not set")
        KeyUser = _make_user_class()
        outer = self

        class KeyUsers:
            def get_user(self, iserver: Any, username: str | None = None,
                         password: str | None = None, certificate: Any = None) -> Any:
                if username is None and password is None:
                    if outer.settings.opcua_allow_anonymous:
                        return KeyUser(role=UserRole.User, name="anonymous")
                    outer.rt.metrics.auth_refusals.labels("opcua").inc()
                    return None
                who = outer._principal(password or "")
                if who is None:
                    outer.rt.metrics.auth_refusals.labels("opcua").inc()
                    log.warning("OPC UA session refused for user %r: not a live key",
                                username)
                    return None
                return KeyUser(role=UserRole.User, name=who.actor,
                               digest=hash_key(password or ""), principal=who)

        server = Server(user_manager=KeyUsers())  # type: ignore[arg-type]
        await server.init()
        server.set_endpoint(url)
        host = socket.gethostname()
        server.set_server_name("FSDI few-shot defect inspection")
        await server.set_application_uri(f"urn:fsdi:server:{host}")
        key_file, cert_file = await self._certificate(f"urn:fsdi:server:{host}", host)
        await server.load_certificate(str(cert_file))
        await server.load_private_key(str(key_file))
        policies = [ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt]
        if not self.settings.opcua_encrypted_only:
            policies.insert(0, ua.SecurityPolicyType.NoSecurity)
        self.ns = await server.register_namespace(NAMESPACE)
        server.set_security_policy(policies, permission_ruleset=_make_rules(self.ns))
        tokens: list[type] = [ua.UserNameIdentityToken]
        if self.settings.opcua_allow_anonymous:
            tokens.append(ua.AnonymousIdentityToken)
        server.set_identity_tokens(tokens)
        root = await server.nodes.objects.add_object(self._id("FSDI"), self._name("FSDI"))
        self._state = {
            "ModelVersion": await self._variable(root, "FSDI/ModelVersion", "",
                                                 ua.VariantType.String),
            "Ready": await self._variable(root, "FSDI/Ready", False, ua.VariantType.Boolean),
        }
        self._folder = await root.add_folder(self._id("FSDI/Groups"), self._name("Groups"))
        self.server = server
        await server.start()
        self._tasks = [asyncio.create_task(self._state_loop(), name="fsdi-opcua-state"),
                       asyncio.create_task(self._sweep_loop(), name="fsdi-opcua-sweep")]
        log.info("OPC UA server on %s (%s)", url,
                 ", ".join(p.name for p in policies))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        self._tasks = []
        if self.server is not None:
            with contextlib.suppress(Exception):
                await self.server.stop()
            self.server = None

    async def _certificate(self, app_uri: str, host: str) -> tuple[Path, Path]:
        """The server's key and certificate under DATA_DIR/opcua, made on first start (and
        again when the certificate lapsed: asyncua's helper renews an invalid one)."""
        from asyncua.crypto.cert_gen import setup_self_signed_certificate
        from cryptography.x509.oid import ExtendedKeyUsageOID

        folder = self.settings.data_dir / "opcua"
        await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
        key_file, cert_file = folder / "server-key.pem", folder / "server-cert.der"
        await setup_self_signed_certificate(
            key_file, cert_file, app_uri, host, [ExtendedKeyUsageOID.SERVER_AUTH],
            {"countryName": "XX", "organizationName": "FSDI", "commonName": f"FSDI {host}"})
        await asyncio.to_thread(key_file.chmod, 0o600)
        return key_file, cert_file

    # -- keys -----------------------------------------------------------------------------

    def _principal(self, key: str) -> Principal | None:
        """The live key behind a password, role machine or above (all three roles are).
        Runs on the event loop: once per session, one indexed read unless cached."""
        digest = hash_key(key)
        who = env_admin(digest, self.settings) or self.rt.key_cache.get(digest)
        if who is not None:
            return who
        try:
            generation = self.rt.key_cache.generation
            with self.rt.sessions() as s:
                who = authenticate(s, digest)
            self.rt.key_cache.put(digest, who, generation)
            return who
        except Exception:  # unknown or revoked (Unauthorized), or no database
            return None

    def _still_live(self, digests: set[str]) -> set[str]:
        live = set()
        for d in digests:
            if env_admin(d, self.settings) is not None:
                live.add(d)
                continue
            with contextlib.suppress(Exception), self.rt.sessions() as s:
                authenticate(s, d)
                live.add(d)
        return live

    async def _sweep_loop(self) -> None:
        """End the sessions whose key was revoked since they opened."""
        while True:
            await asyncio.sleep(SWEEP_S)
            try:
                await self._sweep()
            except Exception:
                log.exception("OPC UA session sweep failed; retrying")

    async def _sweep(self) -> None:
        if self.server is None:
            return
        sessions = list(self.server.iserver._external_sessions.values())
        digests = {getattr(s.user, "digest", "") for s in sessions} - {""}
        if not digests:
            return
        live = await asyncio.to_thread(self._still_live, digests)
        for sess in sessions:
            d = getattr(sess.user, "digest", "")
            if d and d not in live:
                log.warning("OPC UA session of %s closed: its key was revoked",
                            sess.user.name)
                await sess.close_session()

    # -- address space --------------------------------------------------------------------

    def _id(self, path: str) -> ua.NodeId:
        from asyncua import ua
        return ua.NodeId(ua.String(path), ua.Int16(self.ns))

    def _name(self, name: str) -> ua.QualifiedName:
        from asyncua import ua
        return ua.QualifiedName(name, self.ns)

    async def _variable(self, parent: Any, path: str, value: Any, vtype: Any) -> ua.NodeId:
        from asyncua import ua
        node = await parent.add_variable(self._id(path), self._name(path.rsplit("/", 1)[1]),
                                         ua.Variant(value, vtype))
        return node.nodeid  # type: ignore[no-any-return]

    async def _group(self, group: str) -> _GroupNodes:
        nodes = self._groups.get(group)
        if nodes is not None:
            return nodes
        async with self._making:  # one maker: two requests of a new group race here
            nodes = self._groups.get(group)
            if nodes is None:
                nodes = self._groups[group] = await self._make_group(group)
        return nodes

    async def _make_group(self, group: str) -> _GroupNodes:
        from asyncua import ua
        base = f"FSDI/Groups/{group}"
        g = await self._folder.add_object(self._id(base), self._name(group))
        last = await g.add_object(self._id(f"{base}/LastResult"), self._name("LastResult"))
        counters = await g.add_object(self._id(f"{base}/Counters"), self._name("Counters"))
        T = ua.VariantType
        initial = {"ResultId": (0, T.Int64),
                   "Time": (datetime(1601, 1, 1, tzinfo=UTC), T.DateTime),
                   "Verdict": ("", T.String), "Ok": (False, T.Boolean), "Label": ("", T.String),
                   "Unknown": (False, T.Boolean), "Score": (math.nan, T.Double),
                   "AnomalyScore": (math.nan, T.Double), "Threshold": (math.nan, T.Double)}
        return _GroupNodes(
            {n: await self._variable(last, f"{base}/LastResult/{n}", *initial[n])
             for n in LAST_RESULT},
            {n: await self._variable(counters, f"{base}/Counters/{n}", 0, T.UInt64)
             for n in COUNTERS})

    async def _state_loop(self) -> None:
        from asyncua import ua
        while True:
            try:
                rt = self.rt
                ready = rt.ready.is_set() and rt.failed is None
                version = rt.backbone.version if ready else ""
                await self._set({self._state["Ready"]: ua.Variant(ready, ua.VariantType.Boolean),
                                 self._state["ModelVersion"]: ua.Variant(
                                     version, ua.VariantType.String)}, only_changes=True)
                if ready:
                    for g in rt.cache.group_names():
                        await self._group(g)
            except Exception:
                log.exception("OPC UA state refresh failed; retrying")
            await asyncio.sleep(STATE_S)

    async def _set(self, values: dict[Any, ua.Variant], only_changes: bool = False) -> None:
        """Store every value first, then tell the subscribers: a Read in between sees the
        whole set, and the notifications queue before the next publish."""
        from asyncua import ua
        if self.server is None:  # stopped meanwhile
            return
        aspace = self.server.iserver.aspace
        now = datetime.now(UTC)
        changed = []
        for nid, variant in values.items():
            attr = aspace[nid].attributes[ua.AttributeIds.Value]
            if only_changes and attr.value is not None and attr.value.Value == variant:
                continue
            dv = ua.DataValue(variant, SourceTimestamp=now,  # type: ignore[arg-type]
                              ServerTimestamp=now)  # type: ignore[arg-type]
            attr.value = dv
            changed.append((attr, dv))
        for attr, dv in changed:
            for handle, callback in list(attr.datachange_callbacks.items()):
                try:
                    await callback(handle, dv)
                except Exception:
                    log.exception("OPC UA subscriber notification failed")

    async def publish(self, group: str, results: list[Result]) -> None:
        """The results of one /classify, committed a moment ago."""
        from asyncua import ua
        if self.server is None or not results:
            return
        nodes = await self._group(group)
        for r in results:
            nodes.counts["Inspected"] += 1
            if r.verdict == "ok":
                nodes.counts["Ok"] += 1
            elif r.verdict == "defect":
                nodes.counts["Defect"] += 1
            if r.unknown:
                nodes.counts["Unknown"] += 1
        T = ua.VariantType
        values = {nodes.counters[n]: ua.Variant(nodes.counts[n], T.UInt64) for n in COUNTERS}
        newest = max(results, key=lambda r: r.id)
        if newest.id > nodes.last_id:
            nodes.last_id = newest.id
            a = newest.anomaly
            last = {"ResultId": (newest.id, T.Int64), "Time": (datetime.now(UTC), T.DateTime),
                    "Verdict": (newest.verdict or "", T.String),
                    "Ok": (newest.verdict == "ok", T.Boolean),
                    "Label": (newest.label or "", T.String),
                    "Unknown": (newest.unknown, T.Boolean),
                    "Score": (float(newest.score), T.Double),
                    "AnomalyScore": (math.nan if a is None else float(a.score), T.Double),
                    "Threshold": (math.nan if a is None else float(a.threshold), T.Double)}
            values.update({nodes.last[n]: ua.Variant(*last[n]) for n in LAST_RESULT})
        await self._set(values)
