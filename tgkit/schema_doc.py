"""The dataset layout and the schema of its three tables as Markdown, generated from the code
(``python -m tgkit.schema_doc > docs/SCHEMA.md``).

docs/SCHEMA.md is this module's output; a test fails when the two differ.
"""

from __future__ import annotations

from .records import CHAT_COLUMNS, MESSAGE_COLUMNS, PEER_COLUMNS, table_polars_schema, table_schema

__all__ = ["CHAT_DOCS", "COLUMN_DOCS", "PEER_DOCS", "render"]

COLUMN_DOCS: dict[str, str] = {
    "chat_id": "Telegram's bare (unmarked) id of the chat: channel/supergroup id, basic group id or user id.",
    "id": "Message id, unique within the chat; rows are ordered by it (`open_dataset` returns each chat in id order).",
    "date": "When the message was sent (UTC).",
    "sender_id": "Bare id of the sender; for channel posts without a signature, the channel itself.",
    "sender_kind": "`user`, `channel` or `chat`.",
    "text": "Message text (caption for media); null for service messages.",
    "entities": "Formatting and links: `type` (bold, url, text_url, mention, mention_name, hashtag, custom_emoji, "
    "pre, ...), `offset`/`length` in UTF-16 code units as Telegram reports them, `url`, `user_id`, "
    "`document_id` (custom emoji), `language` (pre). Null when there are none.",
    "reply_to_id": "Id of the message replied to (for a pin service message: the pinned message).",
    "thread_id": "Top message of the reply thread (the replied-to message when it is the top).",
    "fwd_peer_id": "Original author of a forward (bare id), when visible.",
    "fwd_peer_kind": "`user`, `channel` or `chat` for `fwd_peer_id`.",
    "fwd_name": "Original author's name when only a name is shown (hidden accounts).",
    "fwd_date": "When the forwarded message was originally sent (UTC).",
    "fwd_post_id": "Original channel post id of a forward from a channel.",
    "views": "View count (channels); null where Telegram reports none.",
    "forwards": "Forward count (channels).",
    "replies": "Number of replies/comments.",
    "edit_date": "Last edit time (UTC); null if never edited.",
    "grouped_id": "Album id: messages sent together share it.",
    "pinned": "Whether the message is pinned.",
    "post_author": "Signature of a channel post.",
    "via_bot_id": "Inline bot the message was sent via.",
    "media_type": "photo, video, document, audio, voice, sticker, animation, video_note, webpage, poll, "
    "geo, contact or other; null without media.",
    "media_mime": "MIME type of the media file.",
    "media_size": "Size in bytes (largest photo size for photos).",
    "media_duration": "Duration in seconds (video, audio, voice).",
    "media_width": "Width in pixels.",
    "media_height": "Height in pixels.",
    "media_file_name": "File name as the sender gave it (untrusted: never used as a path as is).",
    "media_file_id": "Telegram's photo/document id.",
    "media_path": "Downloaded file, relative to the dataset root (under `_media/`); null if not downloaded.",
    "media_error": "Why a download or transcode of this message's media failed; null on success.",
    "reactions": "Reaction buckets: `emoji` (a unicode emoji, or `paid`), `document_id` (custom emoji), `count`.",
    "reactions_total": "Sum of reaction counts; null when the message has no reactions.",
    "service_action": "Service message action in snake case (`channel_create`, `pin_message`, "
    "`chat_add_user`, ...); null for ordinary messages.",
    "date_naive": "True when `date` came from an old Telegram Desktop export without an offset (local time "
    "taken as UTC); null otherwise.",
}


PEER_DOCS: dict[str, str] = {
    "id": "Bare (unmarked) id. Users and channels have separate id spaces: a row is one `(kind, id)`.",
    "kind": "`user`, `channel` (also supergroups) or `chat` (basic group).",
    "username": "Public username without `@`; null if none.",
    "first_name": "User's first name.",
    "last_name": "User's last name.",
    "title": "Channel/group title (for Desktop imports also the name shown for a channel or group).",
    "phone": "Phone number, only when Telegram handed it over (contacts); null otherwise.",
    "bot": "User is a bot.",
    "verified": "Verified by Telegram.",
    "scam": "Flagged as scam by Telegram.",
    "fake": "Flagged as fake (impersonation) by Telegram.",
    "premium": "User has Telegram Premium.",
    "deleted": "Deleted account (users) or deactivated basic group.",
    "first_seen": "When an export first saw this peer (UTC; the earliest over every observation).",
    "last_seen": "When an export last saw this peer (UTC); the row holds that latest observation.",
    "name": "Display name: `first last` (or the username) for users, the title for channels and groups; "
    "for Desktop imports the name the file shows.",
    "megagroup": "Channel is a supergroup.",
    "broadcast": "Channel is a broadcast channel.",
    "forum": "Supergroup with topics.",
    "lang_code": "Language code the user's client reported (bots see it; often null).",
    "has_photo": "Has a profile photo.",
    "min": "Telegram sent a reduced (`min`) object, or a Desktop import (names only): other fields may "
    "be null because they were not sent, not because they are empty.",
    "source": "`api` or `telegram_desktop`: where the latest observation came from.",
}

CHAT_DOCS: dict[str, str] = {
    "id": "Bare id of the exported chat: the `chat_id` of its messages.",
    "kind": "`user` (a private chat), `channel` (channels and supergroups) or `chat` (basic group).",
    "title": "Title (for a private chat: the other user's name).",
    "username": "Public username without `@`.",
    "about": "Description (one `GetFullChannel`/`GetFullChat` per chat and run; null for Desktop imports).",
    "participants_count": "Members, as Telegram reported it at the last export.",
    "linked_chat_id": "Discussion group of a channel (or the channel of a discussion group).",
    "created": "Creation date (UTC). For a channel the account has joined, Telegram reports the join date.",
    "first_id": "Smallest message id in the dataset for this chat.",
    "last_id": "Largest message id in the dataset (where an incremental export resumes).",
    "rows": "Message rows in the dataset for this chat.",
    "last_export": "When an export or import last committed this chat (UTC).",
    "source": "`api` (export_chat) or `telegram_desktop` (import_desktop).",
    "type": "`broadcast`, `megagroup`, `group`, `private`, `bot`, or Telegram Desktop's chat type.",
    "media_root": "Folder that `media_path` is relative to, for Desktop imports (the export folder); "
    "null for API exports (relative to the dataset).",
    "refreshed_until": "Date up to which a refresh run re-read the messages (UTC); null if never refreshed.",
    "status": "Outcome of the last export of this chat: `done` (every message of its window committed), "
    "`partial` (stopped by `limit`, an error or an interrupt: a rerun continues), `comments` (a discussion "
    "group that holds only the comments fetched through its channel); null for imports.",
    "since": "Start of the last export's date window (UTC, inclusive); null = from the first message. "
    "Which ids are complete is in the chat's checkpoint (`ranges`).",
    "until": "End of the last export's date window (UTC, exclusive); null = up to the newest message.",
}

_LAYOUT = """\
## Layout (`"layout": 2` in `_manifest.json`)

```
OUT/messages/chat_id=<id>/part-NNNNNN.parquet   messages; the hive key chat_id is not stored in the files
OUT/peers/c<chat_id>-NNNNNN.parquet             peers seen by the export of <chat_id> (one row per peer)
OUT/chats/c<chat_id>-NNNNNN.parquet             one row: the chat <chat_id>
OUT/_manifest.json                              summary per chat; tables and their columns
OUT/_state/chat_id=<id>/checkpoint.json         commit point of a chat: its parts, peers and chats files,
                                                the complete id ranges, the comment threads fetched
OUT/_state/tmp/  OUT/_state/lock                files being written; lock for the manifest and upgrades
OUT/_media/  OUT/_metrics/  OUT/_plots/         downloaded files, metrics, plots
```

Every table folder holds only complete Parquet files, so the default calls read it:

```python
pl.scan_parquet("OUT/messages")                                   # or "OUT/messages/**/*.parquet", hive_partitioning=True
duckdb.sql("select * from read_parquet('OUT/messages/**/*.parquet', hive_partitioning=true)")
pyarrow.dataset.dataset("OUT/messages", format="parquet", partitioning="hive")
spark.read.parquet("OUT/messages")
tgkit.open_dataset("OUT")                                         # the same rows, column order as below
```

`chat_id` comes from the folder name. Polars and DuckDB type it `Int64`/`BIGINT`; pyarrow's (and
Spark's) partition inference types a path key `int32` when every id fits (strings in pyarrow, `long`
in Spark, once one id exceeds 2^31-1), and no file or metadata changes that default. For `int64` from
pyarrow pass the schema: `partitioning=ds.partitioning(pa.schema([("chat_id", pa.int64())]), flavor="hive")`.
Dates are `timestamp[us, UTC]` in every table.

Writers: a file counts once its chat's checkpoint lists it. A crash between writing a file and
committing the checkpoint leaves an uncommitted file, which `tgkit.open_dataset` ignores and the next
export/import of that chat removes; a raw reader sees it until then. Processes writing different chats
into one dataset never write the same file (peers and chats files carry the chat's id).

`peers` read raw holds one row per peer per exported chat that saw it (each chat keeps its own latest
view); `tgkit.open_dataset(OUT, "peers")` keeps one row per `(kind, id)`: the latest `last_seen`, the
earliest `first_seen`. The same in SQL:
`select * from read_parquet('OUT/peers/*.parquet') qualify row_number() over (partition by kind, id order by last_seen desc) = 1`.
`tgkit.with_names(messages, peers)` adds `sender_name`, `sender_username`, `fwd_peer_name`, `fwd_from`.

Rows are in id order within a part. Parts are in id order unless a later run wrote below an earlier one
(a date window widened to the past, comments): `tgkit.open_dataset` then sorts that chat by `id`; a raw
reader gets the same rows in file order (`sort("chat_id", "id")` if order matters). An id is never
written twice within a chat.

The checkpoint (JSON, 0600) records, beside the committed files: `ranges`, sorted disjoint closed id
intervals `[[lo, hi], ...]` whose every message is committed (a date-windowed export commits the
window's ids; the next run fetches only the gaps inside its own window); `threads`, for a discussion
group, `{channel post id: [replies count seen, largest comment id, id of the post's copy in the group]}`
(a rerun with `comments=True` asks only posts whose `replies` changed, from the largest comment id on);
`ordered` (false: readers sort). A checkpoint written before ranges existed (only `last_id`) means
`[[1, last_id]]`; a malformed `ranges` or `threads` is a `CacheError`, and the file is left as it is.

Comments (`export_chat(channel, out, comments=True)`) are messages of the channel's discussion group
(`chat_id` = the channel's `linked_chat_id` in `chats`), together with the group's copy of each commented
post, exactly as the group's own export would give them. A comment's `thread_id` is the copy's `id`; the
copy's `fwd_post_id` is the channel post's `id`:

```python
msgs = tgkit.open_dataset("OUT").collect()
group = msgs.filter(pl.col("chat_id") == group_id)        # group_id: the channel's linked_chat_id
copies = group.filter(pl.col("fwd_peer_id") == channel_id).select(thread_id="id", post_id="fwd_post_id")
comments = group.join(copies, on="thread_id")            # every comment, with its post's id
comments.join(msgs.filter(pl.col("chat_id") == channel_id), left_on="post_id", right_on="id", suffix="_post")
```

(The count of comments per post equals the post's `replies`.  A manual forward of a channel post into
the group looks like a copy; Telegram marks the automatic copy with `saved_from_peer`, which the schema
does not keep.)

A layout-1 dataset (`OUT/chat_id=<id>/part-*.parquet`, `_checkpoint.json`, `OUT/manifest.json`) opens
with `tgkit.open_dataset`; the next `export_chat` or `import_desktop` into it upgrades it in place, one
chat at a time, each chat committed by its new checkpoint (a kill at any point leaves a dataset that
opens; the next run finishes the upgrade).
"""


def _table(title: str, intro: str, table: str, names: tuple[str, ...], docs: dict[str, str]) -> list[str]:
    arrow = table_schema(table)
    pl_schema = table_polars_schema(table)
    lines = [
        f"## {title}",
        "",
        intro,
        "",
        "| column | Polars type | Arrow type | meaning |",
        "|---|---|---|---|",
    ]
    for name in names:
        lines.append(f"| `{name}` | `{pl_schema[name]}` | `{arrow.field(name).type}` | {docs[name]} |")
    return [*lines, ""]


def render() -> str:
    lines = [
        "# Dataset schema",
        "",
        "Generated from `tgkit/records.py` and `tgkit/schema_doc.py` by "
        "`python -m tgkit.schema_doc > docs/SCHEMA.md`; a test keeps it in sync.",
        "Unknown values are null, never 0. Dates are `Datetime('us', 'UTC')`.",
        "",
        _LAYOUT,
        *_table(
            "messages", "One row per message (`OUT/messages/`).", "messages", MESSAGE_COLUMNS, COLUMN_DOCS
        ),
        *_table(
            "peers",
            "One row per user, channel or group an export saw (`OUT/peers/`): learned from the `users`/`chats` "
            "every history page carries (no extra request), or from the names in a Telegram Desktop file.",
            "peers",
            PEER_COLUMNS,
            PEER_DOCS,
        ),
        *_table("chats", "One row per exported chat (`OUT/chats/`).", "chats", CHAT_COLUMNS, CHAT_DOCS),
    ]
    return "\n".join(lines).rstrip("\n") + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(render(), end="")
