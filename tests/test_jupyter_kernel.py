"""What a notebook user sees: cells run in a fresh IPython kernel (jupyter_client), no ``%matplotlib inline``.

The kernel is this venv's python with this checkout first on ``PYTHONPATH``. Outputs are collected the
way a front end keeps them (``update_display_data`` replaces the output with the same display id,
``clear_output`` clears), so the test sees what a saved notebook would hold.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from queue import Empty
from typing import Any

import pytest

jupyter_client = pytest.importorskip("jupyter_client")
from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402
from jupyter_client.manager import KernelManager  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
CELL_TIMEOUT = 180


class Kernel:
    def __init__(self, kc: Any) -> None:
        self.kc = kc

    def run(self, code: str) -> list[dict[str, Any]]:
        """Run one cell; its outputs as a front end would keep them. Raises on an error output."""
        msg_id = self.kc.execute(code, store_history=True, allow_stdin=False)
        outputs: list[dict[str, Any]] = []
        by_display_id: dict[str, list[dict[str, Any]]] = {}
        while True:
            try:
                msg = self.kc.get_iopub_msg(timeout=CELL_TIMEOUT)
            except Empty as exc:
                raise TimeoutError(f"no output for {CELL_TIMEOUT}s running:\n{code}") from exc
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "status" and content["execution_state"] == "idle":
                break
            if kind == "clear_output":
                outputs.clear()
            elif kind == "stream":
                if (
                    outputs
                    and outputs[-1]["output_type"] == "stream"
                    and outputs[-1]["name"] == content["name"]
                ):
                    outputs[-1]["text"] += content["text"]
                else:
                    outputs.append(
                        {"output_type": "stream", "name": content["name"], "text": content["text"]}
                    )
            elif kind in ("display_data", "execute_result"):
                out = {"output_type": kind, "data": content["data"], "metadata": content["metadata"]}
                outputs.append(out)
                display_id = content.get("transient", {}).get("display_id")
                if display_id:
                    by_display_id.setdefault(display_id, []).append(out)
            elif kind == "update_display_data":
                for out in by_display_id.get(content["transient"]["display_id"], []):
                    out["data"], out["metadata"] = content["data"], content["metadata"]
            elif kind == "error":
                raise AssertionError(f"cell raised {content['ename']}: {content['evalue']}\n{code}")
        self.kc.get_shell_msg(timeout=CELL_TIMEOUT)
        return outputs


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kernel]:
    home = tmp_path_factory.mktemp("kernel")
    spec_dir = home / "kernels" / "tgkit-test"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "tgkit test",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    ksm = KernelSpecManager(kernel_dirs=[str(home / "kernels")])
    km = KernelManager(kernel_name="tgkit-test", kernel_spec_manager=ksm)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TGKIT_", "MPLBACKEND", "PYTHONPATH"))}
    env.update(PYTHONPATH=str(REPO), HOME=str(home), PYTHONWARNINGS="error::DeprecationWarning:tgkit")
    km.start_kernel(cwd=str(home), env=env)
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=120)
        k = Kernel(kc)
        origin = k.run("import tgkit; print(tgkit.__file__)")
        assert origin[0]["text"].strip() == str(REPO / "tgkit" / "__init__.py")  # this checkout's tgkit
        yield k
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def _images(outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in outputs if "image/png" in o.get("data", {})]


def _text(outputs: list[dict[str, Any]]) -> str:
    """Every plain text a saved notebook shows: streams and text/plain of displays."""
    parts = []
    for o in outputs:
        if o["output_type"] == "stream":
            parts.append(o["text"])
        else:
            parts.append(o.get("data", {}).get("text/plain", ""))
    return "".join(parts)


def _check_export_output(outputs: list[dict[str, Any]], chat: str) -> dict[str, str]:
    """The widget is gone from the kept outputs; one plain final line remains. Returns its figures."""
    assert not [o for o in outputs if WIDGET_MIME in o.get("data", {})], outputs
    assert not [o for o in outputs if o["output_type"] == "stream" and o["name"] == "stderr"], outputs
    text = _text(outputs)
    assert "IntProgress" not in text and "HBox" not in text  # no stale widget fallback
    line = re.fullmatch(
        rf"export {re.escape(chat)} done: (?P<rows>[\d,]+) rows \| "
        r"(media (?P<media>[\d,]+) done, (?P<failed>[\d,]+) failed \| )?"
        r"(?P<seconds>[\d.:]+s?) \| (?P<rate>[\d,.]+) msg/s \| no errors\n",
        text,
    )
    assert line is not None, text
    return {k: v for k, v in line.groupdict().items() if v is not None}


def test_plots_and_exports_show_what_a_user_should_see(kernel: Kernel, tmp_path: Path) -> None:
    kernel.run(
        "from tgkit.offline import World, connect_demo\n"
        "world = World(seed=11, channel_messages=400, group_messages=150, videos=False)\n"
        "client = await connect_demo(world=world)\n"
        f"OUT = {str(tmp_path / 'ds')!r}"
    )
    # the default progress in a notebook: the live dashboard, then a plain final line
    outputs = kernel.run(
        "result = await tgkit.export_chat(client, '@tgkit_demo', OUT, media=['photo'], peer_cache=False,\n"
        "                                 pacer=tgkit.Pacer.unlimited())"
    )
    figures = _check_export_output(outputs, "@tgkit_demo")
    facts = kernel.run(
        "print(result.messages, result.media_downloaded, result.media_failed)\nprint(repr(result))"
    )[0]["text"].splitlines()
    rows, downloaded, failed = map(int, facts[0].split())
    assert rows > 300 and downloaded > 0  # the export did fetch messages and photos
    assert int(figures["rows"].replace(",", "")) == rows
    assert (int(figures["media"]), int(figures["failed"])) == (downloaded, failed)
    # one clock, one formatter: the final line and the repr agree to the digit
    assert f", {figures['seconds']}, {figures['rate']} msg/s)" in facts[1], (figures, facts[1])

    # the *_sync twin inside the running kernel loop leaves the same kind of line
    outputs = kernel.run(
        "group = tgkit.export_chat_sync(client, '@tgkit_group', OUT, peer_cache=False,\n"
        "                               pacer=tgkit.Pacer.unlimited())"
    )
    figures = _check_export_output(outputs, "@tgkit_group")
    assert "media" not in figures

    # each plot helper shows a picture in this fresh kernel (no %matplotlib inline) and returns the Figure
    for call in ("tgkit.plot_stages(result.metrics)", "tgkit.plot_resources(result.resources_path)"):
        outputs = kernel.run(call)
        images = _images(outputs)
        assert len(images) == 1, (call, outputs)
        assert images[0]["output_type"] == "execute_result"
        assert "Figure size" in images[0]["data"]["text/plain"]
    out = kernel.run(
        "from matplotlib.figure import Figure\n"
        "fig = tgkit.plot_stages(result.metrics)\n"
        "print(isinstance(fig, Figure), len(fig.axes))"
    )
    assert _images(out) == []  # assigned, not displayed
    assert _text(out) == "True 2\n"

    # under %matplotlib inline: still one picture, not two
    kernel.run("%matplotlib inline")
    for call in ("tgkit.plot_stages(result.metrics)", "tgkit.plot_resources(result.resources_path)"):
        assert len(_images(kernel.run(call))) == 1, call
    kernel.run("await client.disconnect()")
