"""Execute notebooks in place and store them clean, ready to commit (the reference outputs nbval checks).

    .venv/bin/python notebooks/execute.py                 # every notebook in notebooks/
    .venv/bin/python notebooks/execute.py 01_quickstart.ipynb

A small executor on jupyter_client (already a dependency of nbval), so refreshing the committed outputs
needs nothing beyond the dev extras.  Each notebook runs in a fresh ``python3`` kernel with notebooks/ as
its working directory, as under nbval.  Volatile metadata is stripped: ``metadata.execution`` on cells,
widget state, the kernel's language_info version; execution counts are renumbered 1..n.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from queue import Empty

import nbformat
from jupyter_client.manager import start_new_kernel

HERE = Path(__file__).resolve().parent
CELL_TIMEOUT = 300
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


def _run_cell(kc, source: str) -> tuple[list, bool]:
    # store_history=False as nbval does (note: a trailing ";" then does not hide a value)
    msg_id = kc.execute(source, store_history=False, allow_stdin=False)
    outputs: list = []
    by_display_id: dict[str, list] = {}
    errored = False
    while True:
        try:
            msg = kc.get_iopub_msg(timeout=CELL_TIMEOUT)
        except Empty as exc:
            raise TimeoutError(f"no output for {CELL_TIMEOUT}s") from exc
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind == "status" and content["execution_state"] == "idle":
            break
        if kind == "clear_output":
            outputs = []
        elif kind in ("stream", "display_data", "execute_result", "error"):
            out = nbformat.v4.output_from_msg(msg)
            if kind == "execute_result":
                out["execution_count"] = None  # set below
            outputs.append(out)
            errored |= kind == "error"
            display_id = content.get("transient", {}).get("display_id")
            if display_id:
                by_display_id.setdefault(display_id, []).append(out)
        elif kind == "update_display_data":
            # as a front end does: the output shown under that display id is replaced (tgkit's progress
            # dashboard takes itself out of the output when the run ends, leaving its final text line)
            for out in by_display_id.get(content["transient"]["display_id"], []):
                out["data"] = content["data"]
                out["metadata"] = content["metadata"]
    kc.get_shell_msg(timeout=CELL_TIMEOUT)  # the execute_reply
    return outputs, errored


def _coalesce_streams(outputs: list) -> list:
    merged: list = []
    for out in outputs:
        if (
            out["output_type"] == "stream"
            and merged
            and merged[-1]["output_type"] == "stream"
            and merged[-1]["name"] == out["name"]
        ):
            merged[-1]["text"] += out["text"]
        else:
            merged.append(out)
    return merged


def execute(path: Path) -> float:
    nb = nbformat.read(path, as_version=4)
    started = time.perf_counter()
    km, kc = start_new_kernel(kernel_name="python3", cwd=str(path.parent))
    try:
        count = 0
        for cell in nb.cells:
            cell.metadata.pop("execution", None)
            if cell.cell_type != "code":
                continue
            count += 1
            outputs, errored = _run_cell(kc, cell.source)
            for out in outputs:
                if out["output_type"] == "execute_result":
                    out["execution_count"] = count
                out.get("metadata", {}).pop("execution", None)
            cell.outputs = _coalesce_streams(outputs)
            cell.execution_count = count
            if errored:
                err = next(o for o in outputs if o["output_type"] == "error")
                raise RuntimeError(f"{path.name}: cell {count} raised {err['ename']}: {err['evalue']}")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    seconds = time.perf_counter() - started
    nb.metadata = nbformat.from_dict(
        {
            "kernelspec": KERNELSPEC,
            "language_info": {"name": "python", "pygments_lexer": "ipython3"},
        }
    )
    nbformat.validate(nb)
    nbformat.write(nb, path)
    return seconds


def main(argv: list[str]) -> int:
    paths = [HERE / a for a in argv] if argv else sorted(HERE.glob("[0-9]*.ipynb"))
    for path in paths:
        print(f"{path.name}: {execute(path):.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
