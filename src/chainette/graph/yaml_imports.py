"""Python files and modules a YAML chain names, imported from next to the file: :func:`on_sys_path`
and :func:`import_file` (used by :mod:`.yaml_chain`; the CLI's loader uses ``on_sys_path`` too)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

__all__ = ["import_file", "on_sys_path"]


@contextmanager
def on_sys_path(folder: Path) -> Iterator[None]:
    """``folder`` (resolved) first on ``sys.path`` for the block, so modules next to a chain file
    import; removed afterwards unless it was there before."""
    entry = str(folder.resolve())
    added = entry not in sys.path
    if added:
        sys.path.insert(0, entry)
    try:
        yield
    finally:
        if added and entry in sys.path:
            sys.path.remove(entry)


def import_file(path: Path) -> ModuleType:
    """The Python file ``path`` as a module (imported once per path), with its folder on the path."""
    resolved = path.resolve()
    name = f"_chainette_yaml_{resolved.stem}_{abs(hash(str(resolved))):x}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise ImportError(f"{resolved} is not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # pydantic resolves forward references through sys.modules
    try:
        with on_sys_path(resolved.parent):
            spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module
