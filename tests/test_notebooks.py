"""The committed notebooks: executed, clean, and every plot cell really drew something.

nbval (``make test`` runs ``pytest --nbval``) re-executes each notebook and compares text outputs with the
committed ones, but it never compares images.  These checks read the committed .ipynb files instead:
outputs are present, no cell errored, plots rendered to PNG, volatile metadata is stripped.
Refresh the outputs with ``.venv/bin/python notebooks/execute.py``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
EXPECTED = (
    "01_quickstart.ipynb",
    "02_metrics.ipynb",
    "03_slots_vs_dicts.ipynb",
    "04_vaapi_vs_cpu.ipynb",
    "05_peer_cache.ipynb",
    "06_corpus.ipynb",
)
# A cell that calls a plotting function or touches a matplotlib figure must show an image.
PLOT_CALL = re.compile(r"\bplt\.|\bplot_stages\(|\bplot_resources\(|\bfig\b|\bax\w*\.(plot|bar|barh)\(")
IGNORE_MARK = "# NBVAL_IGNORE_OUTPUT"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def _load(name: str) -> dict[str, Any]:
    return json.loads((NOTEBOOK_DIR / name).read_text(encoding="utf-8"))


def _code_cells(nb: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def _source(cell: dict[str, Any]) -> str:
    src = cell["source"]
    return src if isinstance(src, str) else "".join(src)


def test_every_expected_notebook_is_committed() -> None:
    found = sorted(p.name for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    assert found == sorted(EXPECTED)


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_is_executed_and_clean(name: str) -> None:
    nb = _load(name)
    assert nb["nbformat"] == 4 and nb["nbformat_minor"] >= 5
    assert nb["metadata"]["kernelspec"]["name"] == "python3"  # the spec `make venv` installs into .venv
    cells = _code_cells(nb)
    assert cells, "no code cells"
    counts = [c["execution_count"] for c in cells]
    assert counts == list(range(1, len(cells) + 1)), f"not executed top to bottom in one kernel: {counts}"
    assert any(c["outputs"] for c in cells), "outputs were not committed"
    for i, cell in enumerate(cells, 1):
        where = f"{name} code cell {i}"
        assert "execution" not in cell["metadata"], f"{where}: volatile metadata.execution not stripped"
        for out in cell["outputs"]:
            assert out["output_type"] != "error", f"{where}: {out.get('ename')}: {out.get('evalue')}"
            # warnings and progress text land on stderr; widgets have random model ids
            assert not (out["output_type"] == "stream" and out["name"] == "stderr"), (
                f"{where} wrote to stderr: {out['text'][:300]}"
            )
            assert WIDGET_MIME not in out.get("data", {}), f"{where}: a widget output (use progress=False)"
        src = _source(cell)
        if IGNORE_MARK in src:
            # nbval only honours the marker alone on its line; by convention it is the first line
            assert src.splitlines()[0].strip() == IGNORE_MARK, (
                f"{where}: {IGNORE_MARK} must be the first line"
            )


@pytest.mark.parametrize("name", EXPECTED)
def test_plot_cells_rendered_an_image(name: str) -> None:
    plot_cells = [(i, c) for i, c in enumerate(_code_cells(_load(name)), 1) if PLOT_CALL.search(_source(c))]
    assert plot_cells, f"{name} has no plot"
    for i, cell in plot_cells:
        images = [o for o in cell["outputs"] if "image/png" in o.get("data", {})]
        assert images, f"{name} code cell {i} plots but has no image/png output"


def test_make_test_uses_the_sanitize_file() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "--nbval-sanitize-with notebooks/sanitize.cfg" in makefile
    assert (NOTEBOOK_DIR / "sanitize.cfg").is_file()
