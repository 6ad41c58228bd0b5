"""The public surface: every public name is exported in a sorted __all__ and documented (httpx's habit)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import tgkit


def test_all_is_sorted_and_complete():
    assert list(tgkit.__all__) == sorted(tgkit.__all__)
    public = {n for n in dir(tgkit) if not n.startswith("_")}
    modules = {n for n, v in vars(tgkit).items() if inspect.ismodule(v)}
    assert public - modules == set(tgkit.__all__) - {"__version__"}


def test_every_exported_name_is_documented():
    for name in tgkit.__all__:
        obj = getattr(tgkit, name)
        if name == "__version__":
            continue
        assert inspect.getdoc(obj), f"tgkit.{name} has no docstring"


def test_every_module_imports_without_side_effects(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))  # nothing may be written at import time
    for info in pkgutil.walk_packages(tgkit.__path__, "tgkit."):
        importlib.import_module(info.name)
    assert list(tmp_path.iterdir()) == []


def test_import_is_light():
    import subprocess
    import sys

    code = "import sys, tgkit; print(' '.join(m for m in ('av', 'matplotlib', 'ipywidgets') if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "", f"heavy modules imported by `import tgkit`: {out}"
