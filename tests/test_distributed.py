"""export_corpus on a LocalCluster of worker PROCESSES, each hosting one account on the offline double.

Each worker builds the world from the accounts file's seed (same seed, same world); the test process
builds the same world to compute what a single-process export gives and which ids exist.
"""

from __future__ import annotations

import os
import pickle
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

distributed = pytest.importorskip("distributed", reason="tgkit[distributed] (dask) is not installed")

import tgkit  # noqa: E402
from tgkit.distributed import _build_world, _local_cluster, load_accounts, read_chats_file  # noqa: E402
from tgkit.offline import connect_demo  # noqa: E402
from tgkit.pacing import _parse_state  # noqa: E402
from tgkit.peers import PeerCache  # noqa: E402

WORLD = {"channel_messages": 400, "group_messages": 250, "public_channels": 6, "media": False}
GROW = {"public_*": 230}
CHATS = ["@tgkit_demo", "@tgkit_group", "@public_000", "@public_001", "@public_002", "@public_003"]


def _accounts_file(
    path: Path,
    *,
    alice_faults: str = "",
    refill: float = 0,
    names=("alice", "bob"),
    peer_caches: bool = False,
) -> Path:
    limits = (
        f'limits = {{name = "t", methods = {{"messages.GetHistory" = {{capacity = {refill}, '
        f"refill_per_s = {refill}, escalation = 2}}}}}}\n"
        if refill
        else ""
    )
    world = ", ".join(f"{k} = {str(v).lower()}" for k, v in WORLD.items())
    grow = ", ".join(f'"{k}" = {v}' for k, v in GROW.items())
    text = f"[offline]\nseed = 7\n{limits}world = {{{world}}}\nadd_messages = {{{grow}}}\n"
    for name in names:
        text += f'\n[[accounts]]\nname = "{name}"\napi_hash_env = "{name.upper()}_API_HASH"\n'
        text += f'session_env = "{name.upper()}_SESSION"\n'
        if peer_caches:
            text += f'peer_cache = "peers-{name}.msgpack"\n'
        if name == "alice" and alice_faults:
            text += f"offline = {{faults = [{alice_faults}]}}\n"
    path.write_text(text)
    return path


def _warm_peer_caches(world, accounts_path: Path, chats) -> None:
    """Resolve every chat once per account into the account's peer cache (as a previous run would
    have): the adaptive pacer spends resolveUsername sparingly (a few, then one a minute), which is
    right on Telegram and would make these tests wait minutes."""

    async def warm(account) -> None:
        client = await connect_demo(world=world, account=account.name)
        try:
            cache = PeerCache(account.peer_cache)
            for chat in chats:
                await cache.resolve(client, chat)
            cache.save()
        finally:
            await client.disconnect()

    for account in load_accounts(accounts_path).values():
        tgkit.run_sync(warm(account))


def _session_string() -> str:
    from telethon.crypto import AuthKey
    from telethon.sessions import StringSession

    s = StringSession()
    s.set_dc(2, "149.154.167.51", 443)
    s.auth_key = AuthKey(os.urandom(256))
    return s.save()


@pytest.fixture(scope="module", autouse=True)
def _close_sync_loop_after_module() -> Iterator[None]:
    """export_corpus_sync starts this thread's run_sync loop; close it with the module (STYLE #8)."""
    yield
    from tgkit.jupyter import close_sync_loop

    close_sync_loop()


@pytest.fixture(scope="module")
def world():
    return _build_world({"seed": 7, "world": WORLD, "add_messages": GROW})


@pytest.fixture(scope="module")
def secret_env() -> Iterator[dict[str, str]]:
    """Secrets in the environment the worker processes inherit (never in task arguments)."""
    values = {}
    for name in ("ALICE", "BOB"):
        values[f"{name}_API_HASH"] = secrets.token_hex(16)
        values[f"{name}_SESSION"] = _session_string()
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    yield values
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


class _SpecRecorder(distributed.SchedulerPlugin):
    """A scheduler plugin keeping the pickled run_spec of every task the scheduler is handed."""

    def __init__(self) -> None:
        self.blobs: list[bytes] = []

    def update_graph(self, scheduler, *, keys, **kwargs) -> None:  # SchedulerPlugin hook
        for key in keys:
            ts = scheduler.tasks.get(key)
            if ts is not None and ts.run_spec is not None:
                self.blobs.append(pickle.dumps(ts.run_spec))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, secret_env) -> Iterator[tuple[object, object, _SpecRecorder]]:
    accounts = load_accounts(_accounts_file(tmp_path_factory.mktemp("acc") / "accounts.toml"))
    cl = _local_cluster(accounts.values(), dashboard=False)
    recorder = _SpecRecorder()
    cl.scheduler.add_plugin(recorder, name="spec-recorder")
    client = distributed.Client(cl)
    try:
        yield cl, client, recorder
    finally:
        client.close()
        cl.close()


def _single_process(world, chats, out: Path) -> pl.DataFrame:
    async def go():
        client = await connect_demo(world=world)
        try:
            for chat in chats:
                await tgkit.export_chat(client, chat, out, progress=False, peer_cache=False, metrics=False)
        finally:
            await client.disconnect()

    tgkit.run_sync(go())
    return tgkit.open_dataset(out).collect().sort("chat_id", "id")


def _check_complete(frame: pl.DataFrame, world, chat_ids) -> None:
    for cid in chat_ids:
        got = frame.filter(pl.col("chat_id") == cid)["id"].to_list()
        assert got == sorted(set(got)), f"duplicates in chat {cid}"
        assert got == list(world.ids(cid)), f"gap in chat {cid}"


def test_same_rows_as_single_process_and_no_secret_leaves_the_worker(
    cluster, world, secret_env, tmp_path, capfd
):
    _, client, recorder = cluster
    accounts = _accounts_file(tmp_path / "accounts.toml")
    chats_file = tmp_path / "chats.txt"
    chats_file.write_text("# corpus\n" + "\n".join(CHATS) + "\n@no_such_chat  # typo\n\n@TGKIT_DEMO\n")
    assert read_chats_file(chats_file)[-2:] == ["@no_such_chat", "@TGKIT_DEMO"]

    frame = tgkit.export_corpus_sync(
        accounts, chats_file, tmp_path / "dist", client=client, progress=False, peer_cache=False
    )
    by_chat = {r["chat"]: r for r in frame.iter_rows(named=True)}
    assert {by_chat[c]["status"] for c in CHATS} == {"done"}
    assert by_chat["@no_such_chat"]["status"] == "failed"
    assert by_chat["@no_such_chat"]["attempts"] == 1  # a chat-specific failure is not retried elsewhere
    assert "PeerNotFound" in by_chat["@no_such_chat"]["error"]
    assert by_chat["@TGKIT_DEMO"]["status"] == "skipped"
    assert {by_chat[c]["account"] for c in CHATS} == {"alice", "bob"}  # both accounts worked

    got = tgkit.open_dataset(tmp_path / "dist").collect().sort("chat_id", "id")
    want = _single_process(world, CHATS, tmp_path / "single")
    assert got.height == want.height > 0
    assert got.equals(want)
    assert sum(by_chat[c]["rows"] for c in CHATS) == want.height

    # Secrets: not in task arguments/keys the scheduler holds, not in worker/scheduler logs or output.
    logs = (
        repr(client.get_worker_logs())
        + repr(client.get_scheduler_logs())
        + repr(client.get_worker_logs(nanny=True))
    )
    out, err = capfd.readouterr()
    blobs = b"".join(recorder.blobs)
    assert blobs  # the recorder saw the tasks
    for value in secret_env.values():
        assert value not in logs
        assert value not in out + err
        assert value.encode() not in blobs
        assert value not in repr(frame) and value not in frame.write_csv()


def test_account_parked_by_flood_wait_hands_its_chats_to_the_others(cluster, world, tmp_path):
    _, client, _ = cluster
    # alice's 2nd history request answers FLOOD_WAIT_3600 (above the 900 s ceiling): alice is parked
    faults = '{kind = "flood_wait", seconds = 3600, request = "messages.GetHistory", nth = 2}'
    accounts = _accounts_file(tmp_path / "accounts.toml", alice_faults=faults, peer_caches=True)
    chats = [f"@public_00{i}" for i in range(6)]
    _warm_peer_caches(world, accounts, chats)
    t0 = time.perf_counter()
    frame = tgkit.export_corpus_sync(
        accounts, chats, tmp_path / "out", client=client, progress=False, batch_size=100,
        pacing="adaptive", pacing_dir=tmp_path / "pacing",
    )  # fmt: skip
    elapsed = time.perf_counter() - t0
    assert frame["status"].to_list() == ["done"] * 6, frame
    assert elapsed < 60  # nobody waited out the hour
    # alice was parked by her 2nd history request: every chat ends on bob, the interrupted one resumed
    # from alice's committed first page; nothing lost or doubled
    assert set(frame["account"]) == {"bob"}
    assert frame["attempts"].max() >= 2
    ids = [world.resolve_username(c[1:])[1] for c in chats]
    _check_complete(tgkit.open_dataset(tmp_path / "out").collect(), world, ids)
    # alice's pacer holds the hour's wait; bob's pacer (another process) never saw it
    state = {p.name: _parse_state(p.read_bytes())[1] for p in (tmp_path / "pacing").iterdir()}
    assert state["pacing-offline.alice.msgpack"]["messages.GetHistory"]["blocked_for"] > 3000
    assert "messages.GetHistory" not in state["pacing-offline.bob.msgpack"]
    assert frame["flood_waits"].sum() == 0  # nobody slept off a wait


def test_a_killed_worker_s_chats_are_finished_elsewhere(world, secret_env, tmp_path):
    accounts_path = _accounts_file(
        tmp_path / "accounts.toml", refill=5, names=("alice", "bob", "carol"), peer_caches=True
    )
    os.environ["CAROL_API_HASH"] = secrets.token_hex(16)
    os.environ["CAROL_SESSION"] = _session_string()
    accounts = load_accounts(accounts_path)
    cl = _local_cluster(accounts.values(), dashboard=False)
    client = distributed.Client(cl)
    killed: list[int] = []
    try:
        pids = client.run(os.getpid)  # address -> pid of every worker process

        victim = sorted(pids)[0]

        def kill_one() -> None:
            # mid-chat: as soon as the victim works on a chat (3-4 pages at 5 pages/s), kill -9 it
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not client.processing().get(victim):
                time.sleep(0.05)
            time.sleep(0.3)
            os.kill(pids[victim], signal.SIGKILL)
            killed.append(pids[victim])

        killer = threading.Thread(target=kill_one)
        killer.start()
        chats = [f"@public_00{i}" for i in range(6)] + ["@tgkit_demo", "@tgkit_group"]
        _warm_peer_caches(world, accounts_path, chats)
        frame = tgkit.export_corpus_sync(
            accounts_path, chats, tmp_path / "out", client=client, progress=False,
            batch_size=100, pacing="adaptive", pacing_dir=tmp_path / "pacing",
        )  # fmt: skip
        killer.join()
    finally:
        client.close()
        cl.close()
        for k in ("CAROL_API_HASH", "CAROL_SESSION"):
            os.environ.pop(k, None)
    assert killed
    assert frame["status"].to_list() == ["done"] * len(chats), frame
    ids = [world.resolve_username(c[1:])[1] for c in chats]
    _check_complete(tgkit.open_dataset(tmp_path / "out").collect(), world, ids)
    # Every account paced itself with its own adaptive pacer against its own limiter (capacity 5,
    # refill 5/s) and saved what it learned under its own name; an account that met a FLOOD_WAIT
    # learned a lower bound of its server's 5/s.  (The killed process may have died before saving.)
    assert frame["flood_waits"].sum() >= 1
    saved = {p.name: _parse_state(p.read_bytes())[1] for p in (tmp_path / "pacing").iterdir()}
    assert set(saved) <= {f"pacing-offline.{n}.msgpack" for n in ("alice", "bob", "carol")}
    learned = [m["messages.GetHistory"]["refill"] for m in saved.values() if "messages.GetHistory" in m]
    assert learned, saved
    for refill in learned:
        assert 0 < refill <= 5.0 * 1.05


def test_accounts_file_errors_are_clear(tmp_path):
    bad = tmp_path / "a.toml"
    bad.write_text('[[accounts]]\nname = "x"\napi_id = 1\n')
    with pytest.raises(tgkit.ConfigError, match="api_hash_env"):
        load_accounts(bad)
    bad.write_text('[[accounts]]\nname = "x"\napi_id = 1\napi_hash_env = "X_HASH"\nsession = "s.session"\n')
    acct = load_accounts(bad)["x"]
    assert acct.session == tmp_path / "s.session"
    with pytest.raises(tgkit.ConfigError, match="X_HASH is not set"):
        acct.credentials()
    bad.write_text("[[accounts]]\nname = 'x'\n[[accounts]]\nname = 'x'\n[offline]\nseed = 1\n")
    with pytest.raises(tgkit.ConfigError, match="listed twice"):
        load_accounts(bad)
    with pytest.raises(tgkit.ConfigError, match="not found"):
        load_accounts(tmp_path / "missing.toml")


def test_cli_export_accounts_chats_file(secret_env, tmp_path, capsys):
    from tgkit.cli import main

    accounts = _accounts_file(tmp_path / "accounts.toml")
    chats = tmp_path / "chats.txt"
    chats.write_text("@public_000\n# a comment\n@public_001\n@no_such_chat\n")
    argv = ["export", "--accounts", str(accounts), "--chats-file", str(chats), "--out", str(tmp_path / "o")]
    code = main(argv)  # asyncio.run() in this thread: the next run_sync call sets its loop again
    out, err = capsys.readouterr()
    assert code == 3  # some chats failed: distinct exit code, one line each, no traceback
    assert "failed: @no_such_chat: PeerNotFound" in err and "Traceback" not in err
    assert "done=2" in out and "failed=1" in out
    assert "2/3 chats" in err or "3/3 chats" in err  # the progress line: chats done / total per account
    assert tgkit.open_dataset(tmp_path / "o").collect()["chat_id"].n_unique() == 2
