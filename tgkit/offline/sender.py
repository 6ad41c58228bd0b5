"""The sender seam: a duck-typed stand-in for Telethon's ``MTProtoSender`` that talks to the server.

Telethon's client calls ``connect``, ``disconnect``, ``is_connected``, ``send`` (returning futures),
``disconnected``, ``auth_key``, ``dc_id``, ``_transport_connected`` and ``_keepalive_ping``.  Requests
are serialised exactly as MTProtoSender does (``bytes(request)``), answered on a later loop iteration,
and decoded with ``request.read_result``; RPC errors become Telethon's own error classes through
``rpc_message_to_error``, the function the real sender uses.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from telethon import utils
from telethon.crypto import AuthKey
from telethon.errors import rpc_message_to_error
from telethon.extensions import BinaryReader
from telethon.tl.types import RpcError

from .server import OfflineServer, RpcAnswer, _Disconnect

__all__ = ["OfflineSender"]


class OfflineSender:
    """One connection to one data centre of the offline server."""

    def __init__(
        self,
        server: OfflineServer,
        dc_id: int,
        *,
        auth_key: AuthKey | None = None,
        auth_key_callback=None,
        latency: float = 0.0,
    ) -> None:
        self.server = server
        self.dc_id = dc_id
        self.auth_key = auth_key or AuthKey(None)
        self._auth_key_callback = auth_key_callback
        self.latency = latency
        self._user_connected = False
        self._disconnected: asyncio.Future | None = None
        self._pending: set[asyncio.Future] = set()
        self.connects = 0

    def __repr__(self) -> str:  # never shows the auth key
        state = "connected" if self._user_connected else "disconnected"
        return f"<OfflineSender dc={self.dc_id} {state}>"

    async def connect(self, connection: Any) -> bool:
        if self._user_connected:
            return False
        if not self.auth_key.key:
            # a real sender runs the DH exchange here; the double just makes a random key
            self.auth_key.key = os.urandom(256)
            self.server.key_exchanges += 1
            if self._auth_key_callback is not None:
                await self._auth_key_callback(self.auth_key)
        self._user_connected = True
        self._disconnected = asyncio.get_running_loop().create_future()
        self.connects += 1
        return True

    def is_connected(self) -> bool:
        return self._user_connected

    def _transport_connected(self) -> bool:
        return self._user_connected

    def _keepalive_ping(self, rnd_id: int) -> None:
        pass

    async def disconnect(self) -> None:
        self._drop(None)

    @property
    def disconnected(self) -> asyncio.Future:
        if self._disconnected is None:
            self._disconnected = asyncio.get_running_loop().create_future()
        return asyncio.shield(self._disconnected)

    def send(self, request: Any, ordered: bool = False) -> Any:
        if not self._user_connected:
            raise ConnectionError("Cannot send requests while disconnected")
        if utils.is_list_like(request):
            return [self._send_one(r) for r in request]
        return self._send_one(request)

    # --------------------------------------------------------------------------------------------

    def _send_one(self, request: Any) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        data = bytes(request)  # the same serialisation MTProtoSender's RequestState does
        self._pending.add(fut)
        if self.latency:
            loop.call_later(self.latency, self._answer, request, data, fut)
        else:
            loop.call_soon(self._answer, request, data, fut)
        return fut

    def _answer(self, request: Any, data: bytes, fut: asyncio.Future) -> None:
        self._pending.discard(fut)
        if fut.done():
            return
        if not self._user_connected:
            fut.set_exception(ConnectionError("Connection closed before the answer arrived"))
            return
        while True:
            try:
                answer = self.server.handle(data, self.dc_id)
            except _Disconnect as exc:
                if not exc.hard:
                    continue  # Telethon reconnected by itself and sends the request again
                # Telethon gave up reconnecting: it fails every pending request with its last error
                error = ConnectionError("Connection to Telegram failed 5 time(s)")
                self._drop(error)
                fut.set_exception(error)
                return
            except Exception as exc:  # a bug in a handler must surface in the caller, not hang it
                fut.set_exception(exc)
                return
            break
        if isinstance(answer, RpcAnswer):
            fut.set_exception(rpc_message_to_error(RpcError(answer.code, answer.message), request))
            return
        try:
            fut.set_result(request.read_result(BinaryReader(answer)))
        except Exception as exc:  # a decoding bug in the double must surface, not hang
            fut.set_exception(exc)

    def _drop(self, error: BaseException | None) -> None:
        self._user_connected = False
        # As MTProtoSender._disconnect: pending requests get the error, or are cancelled on a clean close.
        for fut in list(self._pending):
            if fut.done():
                continue
            if error is None:
                fut.cancel()
            else:
                fut.set_exception(error)
                fut.exception()  # mark retrieved: nobody may be awaiting it any more
        self._pending.clear()
        if self._disconnected is not None and not self._disconnected.done():
            if error is None:
                self._disconnected.set_result(None)
            else:
                self._disconnected.set_exception(error)
                self._disconnected.exception()
