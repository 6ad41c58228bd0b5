"""Channel comments (``export_chat(..., comments=True)``): the comments under the demo channel's posts
land in its linked discussion group's chat, join to their posts, are fetched incrementally, and never
duplicate when the group is also exported as a chat.  Real Telethon on the offline double."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import tgkit
from tgkit.dataset import ChatPartition
from tgkit.offline import CHANNEL_ID, DISCUSSION_ID, FaultPlan, World, connect_demo

QUIET: dict[str, Any] = {"progress": False, "peer_cache": False, "monitor": False, "metrics": False}


def world_of(seed: int = 3, n: int = 300) -> World:
    return World(seed=seed, channel_messages=n, group_messages=20, media=False)


def export(
    world: World, out: Path, chat: str = "@tgkit_demo", *, faults: FaultPlan | None = None, **kw: Any
) -> tuple[tgkit.ExportResult, dict[str, int]]:
    """One export; returns the result and the requests the SERVER received."""

    async def go() -> tuple[tgkit.ExportResult, dict[str, int]]:
        client = await connect_demo(world=world, faults=faults)
        try:
            r = await tgkit.export_chat(client, chat, out, **{**QUIET, **kw})
            return r, client.offline.call_log.snapshot()
        finally:
            await client.disconnect()

    return asyncio.run(go())


def messages(out: Path, chat_id: int) -> pl.DataFrame:
    return tgkit.open_dataset(out).filter(pl.col("chat_id") == chat_id).collect()


def comments_of(out: Path) -> pl.DataFrame:
    """The documented join (docs/SCHEMA.md): a comment's thread_id is the id of the group's copy of the
    post, whose fwd_post_id is the channel post's id."""
    group = messages(out, DISCUSSION_ID)
    copies = group.filter(pl.col("fwd_peer_id") == CHANNEL_ID).select(thread_id="id", post_id="fwd_post_id")
    return group.join(copies, on="thread_id")


def expected(world: World) -> dict[int, int]:
    """comment id -> post id, from the world itself."""
    out = {}
    for post in world.ids(CHANNEL_ID):
        for c in world.comment_ids(post):
            out[c] = post
    return out


def test_comments_are_the_sum_of_replies_and_each_joins_to_its_post(tmp_path):
    world = world_of()
    out = tmp_path / "ds"
    r, calls = export(world, out, comments=True)
    posts = messages(out, CHANNEL_ID)
    joined = comments_of(out)
    assert joined.height == posts["replies"].sum() > 1000
    assert joined["id"].n_unique() == joined.height
    assert dict(zip(joined["id"], joined["post_id"], strict=True)) == expected(world)
    # every comment reaches a post of the channel, and that post's count is its number of comments
    per_post = joined.group_by("post_id").len()
    check = per_post.join(posts.select(post_id="id", replies="replies"), on="post_id")
    assert check.height == per_post.height and (check["len"] == check["replies"]).all()
    # the group holds exactly the comments and the copies of commented posts, nothing twice
    group = messages(out, DISCUSSION_ID)
    commented = posts.filter(pl.col("replies") > 0).height
    assert group.height == joined.height + commented
    assert group["id"].to_list() == sorted(group["id"].to_list())  # open_dataset: id order
    # one GetReplies per commented post (the demo's threads have < 100 comments), copies 100 at a time
    assert calls["messages.GetReplies"] == commented
    assert calls["channels.GetMessages"] == -(-commented // 100)
    assert r.comments == group.height
    chats = tgkit.open_dataset(out, "chats").collect()
    row = chats.filter(pl.col("id") == DISCUSSION_ID).row(0, named=True)
    assert row["linked_chat_id"] == CHANNEL_ID and row["status"] == "comments"
    assert row["title"] == "tgkit demo comments"


def test_a_rerun_fetches_only_the_comments_of_new_posts(tmp_path):
    world = world_of()
    out = tmp_path / "ds"
    export(world, out, comments=True)
    _, calls = export(world, out, comments=True)
    assert calls.get("messages.GetReplies", 0) == 0  # no count changed: no comment request at all
    new = world.add_messages(CHANNEL_ID, 40)
    new_threads = [p for p in new if world.thread(p) and world.thread(p).comments]
    assert new_threads  # the world gives some new posts comments
    r, calls = export(world, out, comments=True)
    assert calls["messages.GetReplies"] == len(new_threads)
    assert r.comments == sum(world.thread(p).comments for p in new_threads) + len(new_threads)
    joined = comments_of(out)
    assert dict(zip(joined["id"], joined["post_id"], strict=True)) == expected(world)
    # (the double cannot add comments under an existing post; a changed count is covered below)


def test_a_changed_replies_count_refetches_only_after_the_last_known_comment(tmp_path):
    world = world_of()
    out = tmp_path / "ds"
    export(world, out, comments=True)
    group = ChatPartition(out, DISCUSSION_ID)
    cp = group.load()
    assert cp is not None
    post, (count, last, copy) = next(iter(cp.threads.items()))
    assert last == world.comment_ids(post)[-1] and copy == world.thread(post).copy_id
    # pretend the last run saw fewer comments on this post: only that post is asked again, from its
    # last known comment on; nothing is written twice
    cp.threads[post] = [count - 1, last, copy]
    group.commit(cp)
    before = messages(out, DISCUSSION_ID).height
    r, calls = export(world, out, comments=True)
    assert calls["messages.GetReplies"] == 1
    assert r.comments == 0 and messages(out, DISCUSSION_ID).height == before
    assert ChatPartition(out, DISCUSSION_ID).load().threads[post] == [count, last, copy]


def test_group_exported_after_its_comments_has_every_message_once(tmp_path):
    world = world_of()
    out = tmp_path / "ds"
    export(world, out, comments=True)
    before = set(messages(out, DISCUSSION_ID)["id"].to_list())
    r, _ = export(world, out, chat="@tgkit_demo_chat")
    group = messages(out, DISCUSSION_ID)
    assert group["id"].to_list() == list(world.ids(DISCUSSION_ID))  # the service message too; no duplicate
    # only what the comments stage had no reason to fetch: the service message, copies of posts
    # without comments
    assert r.messages == len(set(world.ids(DISCUSSION_ID)) - before) >= 1
    assert comments_of(out).height == messages(out, CHANNEL_ID)["replies"].sum()
    row = tgkit.open_dataset(out, "chats").collect().filter(pl.col("id") == DISCUSSION_ID).row(0, named=True)
    assert row["status"] == "done"
    # and the channel's comments stage after the group's own export writes nothing new
    world.add_messages(CHANNEL_ID, 20)
    export(world, out, comments=True)
    export(world, out, chat="@tgkit_demo_chat")
    group = messages(out, DISCUSSION_ID)
    assert group["id"].to_list() == list(world.ids(DISCUSSION_ID))


def test_comments_after_the_group_was_exported_are_not_written_twice(tmp_path):
    world = world_of()
    out = tmp_path / "ds"
    export(world, out, chat="@tgkit_demo_chat")
    r, _ = export(world, out, comments=True)
    assert r.comments == 0
    group = messages(out, DISCUSSION_ID)
    assert group["id"].to_list() == list(world.ids(DISCUSSION_ID))
    assert dict(zip(comments_of(out)["id"], comments_of(out)["post_id"], strict=True)) == expected(world)


@pytest.mark.parametrize("nth", [1, 30, 90])
def test_an_interrupted_comments_stage_resumes_without_gap_or_duplicate(tmp_path, nth):
    world = world_of()
    out = tmp_path / "ds"
    faults = FaultPlan().rpc_error("MSG_ID_INVALID", code=400, request="messages.GetReplies", nth=nth)
    with pytest.raises(tgkit.TelegramError):
        export(world, out, comments=True, batch_size=400, faults=faults)
    group = messages(out, DISCUSSION_ID)
    assert group["id"].n_unique() == group.height
    export(world, out, comments=True, batch_size=400)
    joined = comments_of(out)
    assert dict(zip(joined["id"], joined["post_id"], strict=True)) == expected(world)
    assert messages(out, DISCUSSION_ID)["id"].n_unique() == messages(out, DISCUSSION_ID).height


def test_comments_follow_the_window_of_the_posts(tmp_path):
    world = world_of()
    out = tmp_path / "ds"
    ids = list(world.ids(CHANNEL_ID))
    spec = world.spec(CHANNEL_ID)
    from datetime import UTC, datetime

    since = datetime.fromtimestamp(world.date_of(spec, ids[200]), UTC)
    export(world, out, since=since, comments=True)
    posts = messages(out, CHANNEL_ID)
    assert posts["id"].min() == ids[200]
    joined = comments_of(out)
    assert set(joined["post_id"].to_list()) <= set(posts["id"].to_list())
    assert joined.height == posts["replies"].sum()


def test_comments_on_a_chat_without_a_discussion_group_do_nothing(tmp_path):
    world = world_of(n=50)
    r, calls = export(world, tmp_path / "ds", chat="@tgkit_group", comments=True)
    assert r.comments == 0 and "messages.GetReplies" not in calls


def test_the_group_and_the_channel_comments_exported_at_once_write_one_partition_in_turn(tmp_path):
    world = world_of()
    out = tmp_path / "ds"

    async def go() -> None:
        client = await connect_demo(world=world)
        try:
            await asyncio.gather(
                tgkit.export_chat(client, "@tgkit_demo", out, comments=True, batch_size=300, **QUIET),
                tgkit.export_chat(client, "@tgkit_demo_chat", out, batch_size=300, **QUIET),
            )
        finally:
            await client.disconnect()

    asyncio.run(go())
    group = messages(out, DISCUSSION_ID)
    assert group["id"].to_list() == list(world.ids(DISCUSSION_ID))
    joined = comments_of(out)
    assert dict(zip(joined["id"], joined["post_id"], strict=True)) == expected(world)
