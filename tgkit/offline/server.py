"""The offline Telegram server: decodes real TL request bytes, answers with real TL bytes.

``OfflineServer.handle(data, dc_id)`` takes the bytes Telethon serialised, reads them back with
``BinaryReader.tgread_object()``, unwraps the invoke wrappers, consults the fault plan, and answers
with ``bytes(result)`` or an ``RpcError``.  It counts every request by type in ``call_log``.
"""

from __future__ import annotations

import struct
import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from telethon.extensions import BinaryReader
from telethon.tl import TLObject, functions, types

from .faults import FaultPlan
from .limits import as_limiter
from .world import HOME_DC, SELF_ID, World

__all__ = ["CallLog", "OfflineServer", "Raw", "RpcAnswer"]

_VECTOR = 0x1CB5C415
_BOOL_TRUE = struct.pack("<I", 0x997275B5)
_WRAPPERS = (
    functions.InvokeWithLayerRequest,
    functions.InitConnectionRequest,
    functions.InvokeWithoutUpdatesRequest,
)
_CHUNK_ALIGN = 4096


def request_name(req: Any) -> str:
    """``messages.GetHistory`` for ``functions.messages.GetHistoryRequest``."""
    cls = type(req)
    module = cls.__module__.rsplit(".", 1)[-1]
    name = cls.__name__.removesuffix("Request")
    return name if module == "functions" else f"{module}.{name}"


@dataclass(slots=True)
class RpcAnswer:
    """An RPC error the server answers with (the sender turns it into Telethon's error class)."""

    code: int
    message: str


class Raw(TLObject):
    """Pre-serialised TL bytes that serialise as themselves (benchmark mode pages)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def _bytes(self) -> bytes:
        return self.data


@dataclass
class CallLog:
    """Requests seen by the server, by type; plus the faults it injected."""

    counts: Counter = field(default_factory=Counter)
    faults: Counter = field(default_factory=Counter)
    takeout: Counter = field(default_factory=Counter)  # the requests that arrived in InvokeWithTakeout
    errors: Counter = field(default_factory=Counter)  # RPC errors answered (FILE_MIGRATE_4, ...), faults too
    flood_waits: Counter = field(default_factory=Counter)  # FLOOD_WAITs the limiter issued, by request type
    total: int = 0

    def count(self, name: str) -> int:
        return self.counts.get(name, 0)

    def snapshot(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))

    def reset(self) -> None:
        self.counts.clear()
        self.faults.clear()
        self.takeout.clear()
        self.errors.clear()
        self.flood_waits.clear()
        self.total = 0


class _Disconnect(Exception):
    def __init__(self, hard: bool) -> None:
        super().__init__("offline double: connection dropped")
        self.hard = hard


class OfflineServer:
    """In-process Telegram over a :class:`World`."""

    def __init__(
        self, world: World | None = None, *, faults: FaultPlan | None = None, limits: Any = None
    ) -> None:
        self.world = world or World()
        self.faults = faults or FaultPlan()
        # a LimitProfile (or its JSON/dict/path) or a Limiter: FLOOD_WAITs from behaviour (limits.py)
        self.limits = None if limits is None else as_limiter(limits, seed=self.world.seed)
        self.call_log = CallLog()
        self._occurrences: Counter = Counter()
        self._takeouts: dict[int, bool] = {}
        self._next_takeout = 1
        self._exported_auth: dict[int, bytes] = {}
        self._authorized_dcs: set[int] = {HOME_DC}
        self.takeout_delay = 0  # > 0: InitTakeoutSession answers TAKEOUT_INIT_DELAY_<n>
        self._lock = threading.Lock()
        self.authorized = True  # False: every request but GetConfig answers AUTH_KEY_UNREGISTERED
        # Auth keys made by senders (a real client runs a DH exchange for each); a session that
        # carries its key over (StringSession, SQLiteSession) adds none.
        self.key_exchanges = 0

    @property
    def takeout_sessions(self) -> frozenset[int]:
        """Ids of the takeout sessions open now (InitTakeoutSession opens one, Finish closes)."""
        return frozenset(self._takeouts)

    # --------------------------------------------------------------------------------------------

    def preserialise(self, chat_id: int) -> int:
        """Benchmark mode: serialise every message of a chat up front; returns the bytes held."""
        return sum(len(self.world.message_bytes(chat_id, i)) for i in self.world.ids(chat_id))

    def handle(self, data: bytes, dc_id: int) -> bytes | RpcAnswer:
        """Answer one serialised request; raises ``_Disconnect`` for connection faults."""
        answer = self._handle(data, dc_id)
        if isinstance(answer, RpcAnswer):
            with self._lock:
                self.call_log.errors[answer.message] += 1
        return answer

    def _handle(self, data: bytes, dc_id: int) -> bytes | RpcAnswer:
        request = BinaryReader(data).tgread_object()
        takeout_id = None
        while True:
            if isinstance(request, _WRAPPERS):
                request = request.query
            elif isinstance(request, functions.InvokeWithTakeoutRequest):
                takeout_id = request.takeout_id
                request = request.query
            else:
                break
        name = request_name(request)
        with self._lock:
            self.call_log.counts[name] += 1
            self.call_log.total += 1
            if takeout_id is not None:
                self.call_log.takeout[name] += 1
            self._occurrences[name] += 1
            occurrence = self._occurrences[name]
        fault = self.faults.check(name, occurrence)
        if fault is not None:
            self.call_log.faults[f"{fault.kind}:{fault.message or fault.kind}"] += 1
            if fault.kind in ("disconnect", "drop"):
                raise _Disconnect(hard=fault.kind == "disconnect")
            if fault.kind == "expire_ref":
                fid = getattr(getattr(request, "location", None), "id", None)
                if fid is not None and self.world.file(fid) is not None:
                    self.world.expire_file_reference(fid)
            return RpcAnswer(fault.code, fault.message)
        if self.limits is not None:
            wait = self.limits.check(name, request, dc_id, takeout=takeout_id is not None)
            if wait is not None:
                with self._lock:
                    self.call_log.flood_waits[name] += 1
                return RpcAnswer(420, f"FLOOD_WAIT_{wait}")
        if not self.authorized and not isinstance(request, functions.help.GetConfigRequest):
            return RpcAnswer(401, "AUTH_KEY_UNREGISTERED")
        if takeout_id is not None and takeout_id not in self._takeouts:
            return RpcAnswer(400, "TAKEOUT_INVALID")
        handler = _HANDLERS.get(type(request))
        if handler is None:
            return RpcAnswer(400, "INPUT_METHOD_INVALID")
        result = handler(self, request, dc_id)
        if isinstance(result, RpcAnswer):
            return result
        return serialise_result(result)

    # --------------------------------------------------------------------------------------------
    # peer helpers

    def _channel_from_input(self, peer: Any) -> int | RpcAnswer:
        if isinstance(peer, types.InputPeerChannel | types.InputChannel):
            cid = peer.channel_id
            if cid not in self.world.chats:
                return RpcAnswer(400, "CHANNEL_INVALID")
            if peer.access_hash != self.world.access_hash(cid):
                return RpcAnswer(400, "CHANNEL_INVALID")
            return cid
        if isinstance(peer, types.InputPeerChannelFromMessage | types.InputChannelFromMessage):
            return RpcAnswer(400, "CHANNEL_INVALID")
        return RpcAnswer(400, "PEER_ID_INVALID")

    def _messages_answer(self, chat_id: int, ids: list[int], count: int) -> Any:
        # Messages go out as their (cached) TL bytes; with them every peer a page may reference
        # (Telegram sends exactly the referenced ones; a superset is harmless and much cheaper here).
        world = self.world
        msgs: list[Any] = [Raw(world.message_bytes(chat_id, i)) for i in ids]
        chats = [world.channel_objs[chat_id]] + [
            world.channel_objs[c] for c in world.source_ids if c != chat_id
        ]
        users = list(world.users.values())
        return types.messages.ChannelMessages(
            pts=count + 1, count=count, messages=msgs, topics=[], chats=chats, users=users
        )


def serialise_result(result: Any) -> bytes:
    if result is True:
        return _BOOL_TRUE
    if isinstance(result, list):
        return struct.pack("<ii", _VECTOR, len(result)) + b"".join(bytes(x) for x in result)
    return bytes(result)


# ------------------------------------------------------------------------------------------------
# handlers: (server, request, dc_id) -> TL object | list | True | RpcAnswer


def _get_config(server: OfflineServer, req: Any, dc_id: int) -> Any:
    now = datetime.now(UTC)
    return types.Config(
        date=now,
        expires=now,
        test_mode=False,
        this_dc=dc_id,
        dc_options=[types.DcOption(id=i, ip_address="127.0.0.1", port=44300 + i) for i in range(1, 6)],
        dc_txt_domain_name="offline.invalid",
        chat_size_max=200,
        megagroup_size_max=200_000,
        forwarded_count_max=100,
        online_update_period_ms=210_000,
        offline_blur_timeout_ms=5_000,
        offline_idle_timeout_ms=30_000,
        online_cloud_timeout_ms=300_000,
        notify_cloud_delay_ms=30_000,
        notify_default_delay_ms=1_500,
        push_chat_period_ms=60_000,
        push_chat_limit=2,
        edit_time_limit=172_800,
        revoke_time_limit=2_147_483_647,
        revoke_pm_time_limit=2_147_483_647,
        rating_e_decay=2_419_200,
        stickers_recent_limit=200,
        channels_read_media_period=604_800,
        call_receive_timeout_ms=20_000,
        call_ring_timeout_ms=90_000,
        call_connect_timeout_ms=30_000,
        call_packet_timeout_ms=10_000,
        me_url_prefix="https://t.me/",
        caption_length_max=1024,
        message_length_max=4096,
        webfile_dc_id=4,
    )


def _get_users(server: OfflineServer, req: Any, dc_id: int) -> list[Any]:
    out = []
    for inp in req.id:
        if isinstance(inp, types.InputUserSelf):
            out.append(server.world.self_user)
            continue
        # A user account needs the right access hash, for bots too (access_hash=0 is for bot accounts).
        uid: int = getattr(inp, "user_id", 0)
        user = server.world.users.get(uid)
        if user is None or inp.access_hash != user.access_hash:
            out.append(types.UserEmpty(id=uid))
        else:
            out.append(user)
    return out


def _get_state(server: OfflineServer, req: Any, dc_id: int) -> Any:
    return types.updates.State(
        pts=1, qts=0, date=datetime.fromtimestamp(server.world.now, UTC), seq=1, unread_count=0
    )


def _get_difference(server: OfflineServer, req: Any, dc_id: int) -> Any:
    return types.updates.DifferenceEmpty(date=datetime.fromtimestamp(server.world.now, UTC), seq=1)


def _get_channel_difference(server: OfflineServer, req: Any, dc_id: int) -> Any:
    return types.updates.ChannelDifferenceEmpty(pts=req.pts, final=True, timeout=300)


def _resolve_username(server: OfflineServer, req: Any, dc_id: int) -> Any:
    found = server.world.resolve_username(req.username)
    if found is None:
        return RpcAnswer(400, "USERNAME_NOT_OCCUPIED")
    kind, pid = found
    if kind == "user":
        return types.contacts.ResolvedPeer(
            peer=types.PeerUser(pid), chats=[], users=[server.world.users[pid]]
        )
    return types.contacts.ResolvedPeer(
        peer=types.PeerChannel(pid), chats=[server.world.channel_objs[pid]], users=[]
    )


def _get_channels(server: OfflineServer, req: Any, dc_id: int) -> Any:
    chats = []
    for inp in req.id:
        cid = server._channel_from_input(inp)
        if isinstance(cid, RpcAnswer):
            return cid
        chats.append(server.world.channel_objs[cid])
    return types.messages.Chats(chats=chats)


def _get_history(server: OfflineServer, req: Any, dc_id: int) -> Any:
    cid = server._channel_from_input(req.peer)
    if isinstance(cid, RpcAnswer):
        return cid
    offset_date = int(req.offset_date.timestamp()) if req.offset_date else None
    ids, count = server.world.history(
        cid,
        offset_id=req.offset_id,
        offset_date=offset_date,
        add_offset=req.add_offset,
        limit=min(req.limit, 100),
        max_id=req.max_id,
        min_id=req.min_id,
    )
    return server._messages_answer(cid, ids, count)


def _channel_get_messages(server: OfflineServer, req: Any, dc_id: int) -> Any:
    cid = server._channel_from_input(req.channel)
    if isinstance(cid, RpcAnswer):
        return cid
    ids = []
    for inp in req.id:
        if not isinstance(inp, types.InputMessageID):
            return RpcAnswer(400, "MESSAGE_IDS_EMPTY")
        ids.append(inp.id)
    world = server.world
    msgs = [world.message(cid, i) for i in ids]
    users, chats = world.peers_of(msgs)
    if all(c.id != cid for c in chats):
        chats.append(world.channel_objs[cid])
    return types.messages.ChannelMessages(
        pts=1, count=len(msgs), messages=msgs, topics=[], chats=chats, users=users
    )


def _get_file(server: OfflineServer, req: Any, dc_id: int) -> Any:
    loc = req.location
    if not isinstance(loc, types.InputDocumentFileLocation | types.InputPhotoFileLocation):
        return RpcAnswer(400, "LOCATION_INVALID")
    blob = server.world.file(loc.id)
    if blob is None or loc.access_hash != server.world.access_hash(loc.id):
        return RpcAnswer(400, "FILE_ID_INVALID")
    if blob.dc_id != dc_id:
        return RpcAnswer(303, f"FILE_MIGRATE_{blob.dc_id}")
    if dc_id not in server._authorized_dcs:
        return RpcAnswer(401, "AUTH_KEY_UNREGISTERED")
    if loc.file_reference != server.world.file_reference(loc.id):
        return RpcAnswer(400, "FILE_REFERENCE_EXPIRED")
    if (
        req.offset < 0
        or req.limit <= 0
        or req.limit > 1024 * 1024
        or (not req.precise and (req.offset % _CHUNK_ALIGN or (1024 * 1024) % req.limit))
    ):
        return RpcAnswer(400, "LIMIT_INVALID")
    chunk = blob.data[req.offset : req.offset + req.limit]
    # Telegram names photo chunks' type; document chunks come back as "partial" (type unknown).
    ftype = types.storage.FileJpeg() if blob.kind == "photo" else types.storage.FilePartial()
    return types.upload.File(type=ftype, mtime=int(server.world.now), bytes=chunk)


def _export_authorization(server: OfflineServer, req: Any, dc_id: int) -> Any:
    token = f"offline-auth-{req.dc_id}".encode()
    server._exported_auth[req.dc_id] = token
    return types.auth.ExportedAuthorization(id=SELF_ID, bytes=token)


def _import_authorization(server: OfflineServer, req: Any, dc_id: int) -> Any:
    if server._exported_auth.get(dc_id) != req.bytes:
        return RpcAnswer(400, "AUTH_BYTES_INVALID")
    server._authorized_dcs.add(dc_id)
    return types.auth.Authorization(user=server.world.self_user)


def _init_takeout(server: OfflineServer, req: Any, dc_id: int) -> Any:
    if server.takeout_delay:
        return RpcAnswer(420, f"TAKEOUT_INIT_DELAY_{server.takeout_delay}")
    tid = server._next_takeout
    server._next_takeout += 1
    server._takeouts[tid] = True
    return types.account.Takeout(id=tid)


def _finish_takeout(server: OfflineServer, req: Any, dc_id: int) -> Any:
    server._takeouts.clear()
    return True


def _get_full_channel(server: OfflineServer, req: Any, dc_id: int) -> Any:
    cid = server._channel_from_input(req.channel)
    if isinstance(cid, RpcAnswer):
        return cid
    spec = server.world.chats[cid]
    full = types.ChannelFull(
        id=cid,
        about=f"{spec.title} (offline double)",
        read_inbox_max_id=spec.max_id,
        read_outbox_max_id=0,
        unread_count=0,
        chat_photo=types.PhotoEmpty(id=0),
        notify_settings=types.PeerNotifySettings(),
        bot_info=[],
        pts=1,
        exported_invite=None,
        participants_count=len(spec.members) or None,
    )
    return types.messages.ChatFull(full_chat=full, chats=[server.world.channel_objs[cid]], users=[])


_HANDLERS = {
    functions.help.GetConfigRequest: _get_config,
    functions.users.GetUsersRequest: _get_users,
    functions.updates.GetStateRequest: _get_state,
    functions.updates.GetDifferenceRequest: _get_difference,
    functions.updates.GetChannelDifferenceRequest: _get_channel_difference,
    functions.contacts.ResolveUsernameRequest: _resolve_username,
    functions.channels.GetChannelsRequest: _get_channels,
    functions.channels.GetFullChannelRequest: _get_full_channel,
    functions.messages.GetHistoryRequest: _get_history,
    functions.channels.GetMessagesRequest: _channel_get_messages,
    functions.upload.GetFileRequest: _get_file,
    functions.auth.ExportAuthorizationRequest: _export_authorization,
    functions.auth.ImportAuthorizationRequest: _import_authorization,
    functions.account.InitTakeoutSessionRequest: _init_takeout,
    functions.account.FinishTakeoutSessionRequest: _finish_takeout,
}
