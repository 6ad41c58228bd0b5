"""The dataset schema as a Markdown table, generated from the code (``python -m tgkit.schema_doc``).

docs/SCHEMA.md is this module's output; a test fails when the two differ.
"""

from __future__ import annotations

from .records import MESSAGE_COLUMNS, arrow_schema, polars_schema

__all__ = ["COLUMN_DOCS", "render"]

COLUMN_DOCS: dict[str, str] = {
    "chat_id": "Telegram's bare (unmarked) id of the chat: channel/supergroup id, basic group id or user id.",
    "id": "Message id, unique within the chat; rows are ordered by it.",
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


def render() -> str:
    arrow = arrow_schema()
    pl_schema = polars_schema()
    lines = [
        "# Dataset schema",
        "",
        "Generated from `tgkit/records.py` by `python -m tgkit.schema_doc > docs/SCHEMA.md`; a test keeps "
        "it in sync.",
        "One row per message; unknown values are null, never 0. Dates are `Datetime('us', 'UTC')`.",
        "",
        "| column | Polars type | Arrow type | meaning |",
        "|---|---|---|---|",
    ]
    for name in MESSAGE_COLUMNS:
        lines.append(f"| `{name}` | `{pl_schema[name]}` | `{arrow.field(name).type}` | {COLUMN_DOCS[name]} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(render(), end="")
