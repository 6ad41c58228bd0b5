"""tgkit: export and analyse Telegram data from Jupyter.

client = await tgkit.offline.connect_demo()            # or a real Telethon client
result = await tgkit.export_chat(client, "@tgkit_demo", "data/exports/demo")
df = tgkit.open_dataset("data/exports/demo").collect()
"""

from .dataset import open_dataset
from .desktop import DesktopFormatError, DesktopImportResult, import_desktop
from .distributed import export_corpus, export_corpus_sync, load_accounts
from .errors import (
    AuthError,
    CacheError,
    ConfigError,
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
    "RateLimit",
    "Records",
    "ResourceMonitor",
    "TelegramError",
    "TgkitError",
    "__version__",
    "export_chat",
    "export_chat_sync",
    "export_corpus",
    "export_corpus_sync",
    "export_messages",
    "export_messages_sync",
    "import_desktop",
    "load_accounts",
    "open_dataset",
    "plot_resources",
    "plot_stages",
    "polars_schema",
    "run_sync",
]
