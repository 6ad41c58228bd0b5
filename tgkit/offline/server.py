"""The offline Telegram server: decodes real TL request bytes, answers with real TL bytes.

``OfflineServer.handle(data, dc_id)`` takes the bytes Telethon serialised, reads them back with
``BinaryReader.tgread_object()``, unwraps the invoke wrappers, consults the fault plan, and answers
with ``bytes(result)`` or an ``RpcError``.  It counts every request by type in ``call_log``.

One server is one account's view of a world (``OfflineServer(world, account="alice")``): its own self
user, Saved Messages and dialogs, call log, takeout sessions and authorised data centres.  A request
the double does not model is answered ``400 not modelled by the offline double: <method>``.
"""

from __future__ import annotations

import copy
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
from .world import BASIC_GROUP_ID, CHANNEL_ID, HOME_DC, World, page_ids

__all__ = ["NOT_MODELLED", "CallLog", "OfflineServer", "Raw", "RpcAnswer"]

NOT_MODELLED = "not modelled by the offline double: "

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
        self,
        world: World | None = None,
        *,
        faults: FaultPlan | None = None,
        account: str | None = None,
        limits: Any = None,
    ) -> None:
        self.world = world or World()
        self.account = account
        self.self_id = self.world.account(account)  # this server's user ("ada" unless account= says)
        self._users_view: tuple[int, list[Any]] = (-1, [])
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
            return RpcAnswer(400, NOT_MODELLED + name)
        result = handler(self, request, dc_id)
        if isinstance(result, RpcAnswer):
            return result
        return serialise_result(result)

    # --------------------------------------------------------------------------------------------
    # this account's view of the world's users

    @property
    def self_user(self) -> Any:
        return self.user(self.self_id)

    def user(self, uid: int) -> Any:
        """A user as this account sees it (``is_self`` only on its own user)."""
        user = self.world.users[uid]
        is_self = uid == self.self_id
        if bool(user.is_self) == is_self:
            return user
        view = copy.copy(user)
        view.is_self = is_self
        return view

    def users(self) -> list[Any]:
        """Every user of the world, seen by this account (cached until the world gains a user)."""
        n = len(self.world.users)
        if self._users_view[0] != n:
            self._users_view = (n, [self.user(uid) for uid in self.world.users])
        return self._users_view[1]

    # --------------------------------------------------------------------------------------------
    # peer helpers

    def _user_from_input(self, peer: Any) -> int | RpcAnswer:
        if isinstance(peer, types.InputPeerSelf | types.InputUserSelf):
            return self.self_id
        if isinstance(peer, types.InputPeerUser | types.InputUser):
            user = self.world.users.get(peer.user_id)
            if user is None or peer.access_hash != user.access_hash:
                return RpcAnswer(400, "PEER_ID_INVALID")
            return peer.user_id
        return RpcAnswer(400, "PEER_ID_INVALID")

    def _mail_peer(self, peer: Any) -> tuple[str, int] | RpcAnswer | None:
        """("user", id) / ("chat", id) for a peer in this account's own id space; None for channels."""
        if isinstance(peer, types.InputPeerChannel | types.InputPeerChannelFromMessage):
            return None
        if isinstance(peer, types.InputPeerChat):
            if peer.chat_id != BASIC_GROUP_ID:
                return RpcAnswer(400, "CHAT_ID_INVALID")
            return ("chat", peer.chat_id)
        uid = self._user_from_input(peer)
        if isinstance(uid, RpcAnswer):
            return uid
        return ("user", uid)

    def _page_chats(self, chat_id: int) -> list[Any]:
        world = self.world
        chats = [world.channel_objs[chat_id]] + [
            world.channel_objs[c] for c in world.source_ids if c != chat_id
        ]
        linked = world.chats[chat_id].linked_chat_id
        if linked is not None and world.chats[chat_id].discussion_of:
            chats.append(world.channel_objs[linked])  # copies come from the channel
        return chats

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
        return types.messages.ChannelMessages(
            pts=count + 1,
            count=count,
            messages=msgs,
            topics=[],
            chats=self._page_chats(chat_id),
            users=self.users(),
        )

    def _mail_answer(self, ids: list[int], count: int) -> Any:
        """A page of this account's own messages: messages.Messages when it is all of them, else a slice."""
        world = self.world
        msgs = [world.mailbox_message(self.self_id, i) for i in ids]
        chats = [world.basic_group, world.channel_objs[CHANNEL_ID]]
        if len(msgs) >= count:
            return types.messages.Messages(messages=msgs, topics=[], chats=chats, users=self.users())
        return types.messages.MessagesSlice(
            count=count, messages=msgs, topics=[], chats=chats, users=self.users()
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
            out.append(server.self_user)
            continue
        # A user account needs the right access hash, for bots too (access_hash=0 is for bot accounts).
        uid: int = getattr(inp, "user_id", 0)
        user = server.world.users.get(uid)
        if user is None or inp.access_hash != user.access_hash:
            out.append(types.UserEmpty(id=uid))
        else:
            out.append(server.user(uid))
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
        return types.contacts.ResolvedPeer(peer=types.PeerUser(pid), chats=[], users=[server.user(pid)])
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
    mail = server._mail_peer(req.peer)
    if isinstance(mail, RpcAnswer):
        return mail
    if mail is not None:  # Saved Messages, a private chat, the basic group
        offset_date = int(req.offset_date.timestamp()) if req.offset_date else None
        ids, count = server.world.mailbox_history(
            server.self_id,
            mail,
            offset_id=req.offset_id,
            offset_date=offset_date,
            add_offset=req.add_offset,
            limit=min(req.limit, 100),
            max_id=req.max_id,
            min_id=req.min_id,
        )
        return server._mail_answer(ids, count)
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
    world = server.world
    if isinstance(loc, types.InputPeerPhotoFileLocation):
        # a profile photo, named by its owner: no file reference, the peer's access hash instead
        owner = world.profile_photo_owner(loc.photo_id)
        peer = _peer_key(server, loc.peer)
        if isinstance(peer, RpcAnswer):
            return peer
        if owner is None or owner[1] != peer[1]:
            return RpcAnswer(400, "LOCATION_INVALID")
        fid, thumb = loc.photo_id, "c" if loc.big else "a"
    elif isinstance(loc, types.InputDocumentFileLocation | types.InputPhotoFileLocation):
        fid, thumb = loc.id, loc.thumb_size
        if world.file(fid) is None or loc.access_hash != world.access_hash(fid):
            return RpcAnswer(400, "FILE_ID_INVALID")
    else:
        return RpcAnswer(400, "LOCATION_INVALID")
    blob = world.file(fid)
    if blob is None:
        return RpcAnswer(400, "FILE_ID_INVALID")
    if blob.dc_id != dc_id:
        return RpcAnswer(303, f"FILE_MIGRATE_{blob.dc_id}")
    if dc_id not in server._authorized_dcs:
        return RpcAnswer(401, "AUTH_KEY_UNREGISTERED")
    if not isinstance(loc, types.InputPeerPhotoFileLocation) and loc.file_reference != world.file_reference(
        fid
    ):
        return RpcAnswer(400, "FILE_REFERENCE_EXPIRED")
    if (
        req.offset < 0
        or req.limit <= 0
        or req.limit > 1024 * 1024
        or (not req.precise and (req.offset % _CHUNK_ALIGN or (1024 * 1024) % req.limit))
    ):
        return RpcAnswer(400, "LIMIT_INVALID")
    data = world.file_bytes(fid, thumb)
    if data is None:  # a size the file does not have (or "i", which is inline, never downloaded)
        return RpcAnswer(400, "LOCATION_INVALID")
    chunk = data[req.offset : req.offset + req.limit]
    # Telegram names photo chunks' type; document chunks come back as "partial" (type unknown).
    jpeg = blob.kind != "document" or bool(thumb)
    ftype = types.storage.FileJpeg() if jpeg else types.storage.FilePartial()
    return types.upload.File(type=ftype, mtime=int(world.now), bytes=chunk)


def _peer_key(server: OfflineServer, peer: Any) -> tuple[str, int] | RpcAnswer:
    """("user" | "chat" | "channel", id) for any input peer this account may name."""
    mail = server._mail_peer(peer)
    if mail is not None:
        return mail
    cid = server._channel_from_input(peer)
    if isinstance(cid, RpcAnswer):
        return cid
    return ("channel", cid)


def _export_authorization(server: OfflineServer, req: Any, dc_id: int) -> Any:
    token = f"offline-auth-{req.dc_id}".encode()
    server._exported_auth[req.dc_id] = token
    return types.auth.ExportedAuthorization(id=server.self_id, bytes=token)


def _import_authorization(server: OfflineServer, req: Any, dc_id: int) -> Any:
    if server._exported_auth.get(dc_id) != req.bytes:
        return RpcAnswer(400, "AUTH_BYTES_INVALID")
    server._authorized_dcs.add(dc_id)
    return types.auth.Authorization(user=server.self_user)


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


def _full_photo(server: OfflineServer, photo: Any) -> Any:
    pid = getattr(photo, "photo_id", None)
    return types.PhotoEmpty(id=0) if pid is None else server.world.profile_photo(pid)


def _get_full_channel(server: OfflineServer, req: Any, dc_id: int) -> Any:
    cid = server._channel_from_input(req.channel)
    if isinstance(cid, RpcAnswer):
        return cid
    world = server.world
    spec = world.spec(cid)
    obj = world.channel_objs[cid]
    ids = world.ids(cid)
    megagroup = spec.kind == "megagroup"
    full = types.ChannelFull(
        id=cid,
        about=world.about(cid),
        read_inbox_max_id=ids[-1] if ids else 0,
        read_outbox_max_id=0,
        unread_count=0,
        chat_photo=_full_photo(server, obj.photo),
        notify_settings=types.PeerNotifySettings(),
        bot_info=[],
        pts=spec.max_id + 1,
        exported_invite=None,
        participants_count=world.participants_count(spec),
        admins_count=3 if megagroup else 2,
        online_count=max(1, world.participants_count(spec) // 20) if megagroup else None,
        can_view_participants=megagroup or None,
        linked_chat_id=spec.linked_chat_id,
        available_min_id=None,
        hidden_prehistory=None,
    )
    chats = [obj]
    if spec.linked_chat_id is not None:
        chats.append(world.channel_objs[spec.linked_chat_id])
    return types.messages.ChatFull(full_chat=full, chats=chats, users=[])


def _get_full_chat(server: OfflineServer, req: Any, dc_id: int) -> Any:
    if req.chat_id != BASIC_GROUP_ID:
        return RpcAnswer(400, "CHAT_ID_INVALID")
    world = server.world
    chat = world.basic_group
    members = (server.self_id, *world.group_user_ids[:5])
    created = chat.date
    participants = [types.ChatParticipantCreator(user_id=members[1])] if len(members) > 1 else []
    participants += [
        types.ChatParticipant(user_id=uid, inviter_id=members[1], date=created)
        for uid in members
        if uid != members[1]
    ]
    full = types.ChatFull(
        id=chat.id,
        about=world.about(chat.id),
        participants=types.ChatParticipants(chat_id=chat.id, participants=participants, version=1),
        notify_settings=types.PeerNotifySettings(),
        chat_photo=_full_photo(server, chat.photo),
    )
    return types.messages.ChatFull(full_chat=full, chats=[chat], users=[server.user(u) for u in members])


def _get_full_user(server: OfflineServer, req: Any, dc_id: int) -> Any:
    uid = server._user_from_input(req.id)
    if isinstance(uid, RpcAnswer):
        return RpcAnswer(400, "USER_ID_INVALID")
    user = server.user(uid)
    bot = bool(user.bot)
    full = types.UserFull(
        id=uid,
        settings=types.PeerSettings(),
        notify_settings=types.PeerNotifySettings(),
        common_chats_count=0 if bot else 2,
        about="I answer /start with a demo." if bot else f"{user.first_name} {user.last_name}, offline world",
        profile_photo=_full_photo(server, user.photo) if user.photo else None,
        bot_info=types.BotInfo(user_id=uid, description="An offline demo bot.", commands=[]) if bot else None,
    )
    return types.users.UserFull(full_user=full, chats=[], users=[user])


def _get_messages(server: OfflineServer, req: Any, dc_id: int) -> Any:
    """messages.getMessages: ids of this account's own id space (private chats, Saved, basic group)."""
    ids = []
    for inp in req.id:
        if not isinstance(inp, types.InputMessageID):
            return RpcAnswer(400, "MESSAGE_IDS_EMPTY")
        ids.append(inp.id)
    msgs = [server.world.mailbox_message(server.self_id, i) for i in ids]
    return types.messages.Messages(
        messages=msgs,
        topics=[],
        chats=[server.world.basic_group, server.world.channel_objs[CHANNEL_ID]],
        users=server.users(),
    )


def _thread(server: OfflineServer, peer: Any, msg_id: int) -> Any:
    """The discussion thread a (peer, msg_id) names: a channel post, or its copy in the group."""
    cid = server._channel_from_input(peer)
    if isinstance(cid, RpcAnswer):
        return cid
    world = server.world
    spec = world.spec(cid)
    if spec.discussion_of:
        t = world.thread_of_message(msg_id)
        if t is None or t.copy_id != msg_id:
            return RpcAnswer(400, "MSG_ID_INVALID")
        return t
    if spec.linked_chat_id is None or cid != CHANNEL_ID:
        return RpcAnswer(400, "MSG_ID_INVALID")
    t = world.thread(msg_id)
    if t is None:
        return RpcAnswer(400, "MSG_ID_INVALID")
    return t


def _get_replies(server: OfflineServer, req: Any, dc_id: int) -> Any:
    t = _thread(server, req.peer, req.msg_id)
    if isinstance(t, RpcAnswer):
        return t
    world = server.world
    group = world.spec(world.chats[CHANNEL_ID].linked_chat_id or 0)
    comments = world.comment_ids(t.post)
    offset_date = int(req.offset_date.timestamp()) if req.offset_date else None
    ids, count = page_ids(
        comments,
        lambda i: world.date_of(group, i),
        offset_id=req.offset_id,
        offset_date=offset_date,
        add_offset=req.add_offset,
        limit=min(req.limit, 100),
        max_id=req.max_id,
        min_id=req.min_id,
    )
    return server._messages_answer(group.id, ids, count)


def _get_discussion_message(server: OfflineServer, req: Any, dc_id: int) -> Any:
    t = _thread(server, req.peer, req.msg_id)
    if isinstance(t, RpcAnswer):
        return t
    world = server.world
    group_id = world.chats[CHANNEL_ID].linked_chat_id or 0
    last = t.copy_id + t.comments
    return types.messages.DiscussionMessage(
        messages=[world.message(group_id, t.copy_id)],
        unread_count=0,
        chats=server._page_chats(group_id),
        users=server.users(),
        max_id=last if t.comments else None,
        read_inbox_max_id=last,
        read_outbox_max_id=last,
    )


def _get_dialogs(server: OfflineServer, req: Any, dc_id: int) -> Any:
    """messages.getDialogs: pinned first (first page only), then by top message date, newest first."""
    world = server.world
    rows = world.dialogs(server.self_id)
    if req.folder_id is not None:
        rows = [r for r in rows if (r.folder_id or 0) == req.folder_id]
    total = len(rows)
    offset_date = int(req.offset_date.timestamp()) if req.offset_date else 0
    first_page = not offset_date and not req.offset_id and isinstance(req.offset_peer, types.InputPeerEmpty)
    pinned = [r for r in rows if r.pinned] if first_page and not req.exclude_pinned else []
    rest = [r for r in rows if not r.pinned or req.exclude_pinned or not first_page]
    if req.exclude_pinned:
        rest = [r for r in rest if not r.pinned]
    if not first_page:
        offset_rank = None
        key = (
            _peer_key(server, req.offset_peer)
            if not isinstance(req.offset_peer, types.InputPeerEmpty)
            else None
        )
        if key is not None and not isinstance(key, RpcAnswer):
            offset_rank = next((r.rank for r in rows if _row_key(r) == key), None)
        if offset_rank is not None:
            rest = [r for r in rest if (r.date, r.rank) < (offset_date, offset_rank)]
        else:
            rest = [
                r for r in rest if r.date < offset_date or (not offset_date and r.top_message < req.offset_id)
            ]
    limit = max(0, min(req.limit, 100))
    page = (pinned + rest)[:limit]
    dialogs = [
        types.Dialog(
            peer=r.peer,
            top_message=r.top_message,
            read_inbox_max_id=r.read_inbox_max_id,
            read_outbox_max_id=r.read_outbox_max_id,
            unread_count=r.unread_count,
            unread_mentions_count=0,
            unread_reactions_count=0,
            unread_poll_votes_count=0,
            notify_settings=types.PeerNotifySettings(),
            pinned=r.pinned or None,
            pts=world.spec(r.peer.channel_id).max_id + 1 if r.channel else None,
            folder_id=r.folder_id,
        )
        for r in page
    ]
    messages = []
    for r in page:
        if not r.top_message:
            continue
        if r.channel:
            messages.append(world.message(r.peer.channel_id, r.top_message))
        else:
            messages.append(world.mailbox_message(server.self_id, r.top_message))
    users, chats = world.peers_of(messages)
    seen_users = {u.id for u in users}
    seen_chats = {c.id for c in chats}
    users = [server.user(u.id) for u in users]
    for r in page:
        key = _row_key(r)
        if key[0] == "user" and key[1] not in seen_users:
            users.append(server.user(key[1]))
            seen_users.add(key[1])
        elif key[0] == "channel" and key[1] not in seen_chats:
            chats.append(world.channel_objs[key[1]])
            seen_chats.add(key[1])
        elif key[0] == "chat" and key[1] not in seen_chats:
            chats.append(world.basic_group)
            seen_chats.add(key[1])
    if server.self_id not in seen_users:
        users.append(server.self_user)
    if len(page) == total:
        return types.messages.Dialogs(dialogs=dialogs, messages=messages, chats=chats, users=users)
    return types.messages.DialogsSlice(
        count=total, dialogs=dialogs, messages=messages, chats=chats, users=users
    )


def _row_key(row: Any) -> tuple[str, int]:
    peer = row.peer
    if isinstance(peer, types.PeerChannel):
        return ("channel", peer.channel_id)
    if isinstance(peer, types.PeerChat):
        return ("chat", peer.chat_id)
    return ("user", peer.user_id)


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
    functions.messages.GetDialogsRequest: _get_dialogs,
    functions.messages.GetMessagesRequest: _get_messages,
    functions.messages.GetRepliesRequest: _get_replies,
    functions.messages.GetDiscussionMessageRequest: _get_discussion_message,
    functions.messages.GetFullChatRequest: _get_full_chat,
    functions.users.GetFullUserRequest: _get_full_user,
}
