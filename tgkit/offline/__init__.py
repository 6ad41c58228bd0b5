"""tgkit.offline: an in-process Telegram that drives the real, unmodified Telethon client.

    client = await tgkit.offline.connect_demo()          # a connected TelegramClient on the demo world
    client.offline.call_log.snapshot()                   # requests by type
    client.offline.faults.flood_wait(30, request="messages.GetHistory", nth=3)
    alice = await tgkit.offline.connect_demo(world=client.offline.world, account="alice")  # a 2nd account

See docs/ARCHITECTURE.md for what the double models and what it does not.
"""

from .client import OFFLINE_API_HASH, OFFLINE_API_ID, OfflineClient, connect_demo
from .faults import Fault, FaultPlan
from .limits import Limiter, LimitProfile, MethodLimit, load_profile, no_limits, random_profile
from .server import NOT_MODELLED, CallLog, OfflineServer, request_name
from .world import (
    BASIC_GROUP_ID,
    BOT_ID,
    CHANNEL_ID,
    DISCUSSION_ID,
    GROUP_ID,
    SELF_ID,
    SOURCE_BASE,
    DialogRow,
    World,
)

__all__ = [
    "BASIC_GROUP_ID",
    "BOT_ID",
    "CHANNEL_ID",
    "DISCUSSION_ID",
    "GROUP_ID",
    "NOT_MODELLED",
    "OFFLINE_API_HASH",
    "OFFLINE_API_ID",
    "SELF_ID",
    "SOURCE_BASE",
    "CallLog",
    "DialogRow",
    "Fault",
    "FaultPlan",
    "LimitProfile",
    "Limiter",
    "MethodLimit",
    "OfflineClient",
    "OfflineServer",
    "World",
    "connect_demo",
    "load_profile",
    "no_limits",
    "random_profile",
    "request_name",
]
