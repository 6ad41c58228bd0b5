"""tgkit.offline: an in-process Telegram that drives the real, unmodified Telethon client.

    client = await tgkit.offline.connect_demo()          # a connected TelegramClient on the demo world
    client.offline.call_log.snapshot()                   # requests by type
    client.offline.faults.flood_wait(30, request="messages.GetHistory", nth=3)

See docs/ARCHITECTURE.md for what the double models and what it does not.
"""

from .client import OFFLINE_API_HASH, OFFLINE_API_ID, OfflineClient, connect_demo
from .faults import Fault, FaultPlan
from .server import CallLog, OfflineServer, request_name
from .world import BOT_ID, CHANNEL_ID, GROUP_ID, SELF_ID, World

__all__ = [
    "BOT_ID",
    "CHANNEL_ID",
    "GROUP_ID",
    "OFFLINE_API_HASH",
    "OFFLINE_API_ID",
    "SELF_ID",
    "CallLog",
    "Fault",
    "FaultPlan",
    "OfflineClient",
    "OfflineServer",
    "World",
    "connect_demo",
    "request_name",
]
