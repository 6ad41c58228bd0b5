"""tgkit: export and analyse Telegram data from Jupyter.

from tgkit import offline
client = await offline.connect_demo()                  # or a real Telethon client
result = await tgkit.export_chat(client, "@tgkit_demo", "data/exports/demo", pacer=tgkit.Pacer.unlimited())
df = tgkit.open_dataset("data/exports/demo").collect()
frame = await tgkit.export_chats(client, ["@tgkit_demo", "@tgkit_group"], "data/exports/demo")
named = tgkit.with_names(tgkit.open_dataset(out), tgkit.open_dataset(out, "peers"))
"""

from .corpus import export_chats, export_chats_sync, list_dialogs, list_dialogs_sync
from .dataset import open_dataset, with_names
from .desktop import DesktopImportResult, import_desktop
from .distributed import export_corpus, export_corpus_sync, load_accounts
from .errors import (
    AuthError,
    CacheError,
    ConfigError,
    DesktopFormatError,
    EncoderUnavailable,
    ExportError,
    FloodWaitTooLong,
    HardwareError,
    PeerNotFound,
    TelegramError,
    TgkitError,
)
from .export import ExportResult, export_chat, export_chat_sync, export_messages, export_messages_sync
from .jupyter import run_sync
from .metrics import MetricsCollector, ResourceMonitor
from .pacing import Pacer, RateLimit
from .peers import PeerCache
from .plots import plot_resources, plot_stages
from .privacy import Pseudonymiser, pseudonymise
from .records import ExportedMessage, Records, polars_schema

__version__ = "0.1.0"

__all__ = [
    "AuthError",
    "CacheError",
    "ConfigError",
    "DesktopFormatError",
    "DesktopImportResult",
    "EncoderUnavailable",
    "ExportError",
    "ExportResult",
    "ExportedMessage",
    "FloodWaitTooLong",
    "HardwareError",
    "MetricsCollector",
    "Pacer",
    "PeerCache",
    "PeerNotFound",
    "Pseudonymiser",
    "RateLimit",
    "Records",
    "ResourceMonitor",
    "TelegramError",
    "TgkitError",
    "__version__",
    "export_chat",
    "export_chat_sync",
    "export_chats",
    "export_chats_sync",
    "export_corpus",
    "export_corpus_sync",
    "export_messages",
    "export_messages_sync",
    "import_desktop",
    "list_dialogs",
    "list_dialogs_sync",
    "load_accounts",
    "open_dataset",
    "plot_resources",
    "plot_stages",
    "polars_schema",
    "pseudonymise",
    "run_sync",
    "with_names",
]
