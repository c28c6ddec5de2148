"""Finding what a command line names: ``path/to/file.py:chain`` or ``package.module:chain``.

A file is imported by path (its folder is on ``sys.path`` while it imports, so sibling imports
work); a module by name (the current folder is on ``sys.path`` while it imports, as with
``python -m``). Every failure says what was tried and what to write instead.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import os
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import NoReturn, TypeVar

from .._errors import ChainetteError
from ..graph.chain import ChainGraph
from ..graph.yaml_chain import on_sys_path
from ._common import check_file

__all__ = ["TargetError", "count_jsonl_records", "import_target", "load_chain", "load_object", "split_target"]

TARGET_FORMS = "path/to/file.py:chain_variable, package.module:chain_variable or path/to/chain.yaml"

_BLANK_LINE = re.compile(rb"^[ \t\r\f\v]*\n", re.M)


class TargetError(ChainetteError):
    """The TARGET of a command cannot be imported, or does not name a Chain."""


def split_target(target: str) -> tuple[str, str | None]:
    """``"a/b.py:chain"`` → ``("a/b.py", "chain")``; the attribute is None when not given.

    Example:
        >>> split_target("pipelines.qa:chain")
        ('pipelines.qa', 'chain')
        >>> split_target("examples/quickstart.py")
        ('examples/quickstart.py', None)
    """
    source, sep, attr = target.rpartition(":")
    if not sep or not source or any(c in attr for c in "/\\") or attr.endswith(".py"):
        # No colon, or the colon belongs to a Windows drive letter (C:\\x\\y.py).
        return target, None
    return source, attr or None


def import_target(source: str) -> ModuleType:
    """Import the module part of a TARGET: a ``.py`` path or a dotted module name."""
    if not source:
        raise TargetError(f"Empty TARGET; write {TARGET_FORMS}.")
    if source.endswith(".py") or "/" in source or os.sep in source or Path(source).is_file():
        return _import_file(Path(source))
    return _import_module(source)


def load_chain(target: str) -> ChainGraph:
    """The :class:`Chain` named by ``target``.

    Without ``:name``, a module that defines exactly one Chain gives that one.
    """
    if target.endswith((".yaml", ".yml")):
        check_file(Path(target), "TARGET", TargetError)  # /dev/zero, a FIFO: refused before reading
        return ChainGraph.from_yaml(target)
    return load_object(target, ChainGraph, "Chain", TARGET_FORMS, default_name="chain")


T = TypeVar("T")


def load_object(target: str, kind: type[T], noun: str, forms: str, *, default_name: str = "name") -> T:
    """The ``kind`` instance named by ``target`` (``source:attr``, dotted attributes allowed).

    Without ``:attr``, a module that defines exactly one at module level gives that one. Every
    refusal lists the ``noun`` objects the module defines, with a did-you-mean for a misspelt name.
    """
    source, attr = split_target(target)
    module = import_target(source)
    found = {name: value for name, value in vars(module).items() if isinstance(value, kind)}
    listing = ", ".join(sorted(found)) or "none"
    if attr is None:
        if len(found) == 1:
            return next(iter(found.values()))
        raise TargetError(
            f"TARGET {target!r} does not say which {noun.lower()} to run; {source} defines these {noun} "
            f"objects: {listing}. Write {forms}, e.g. {source}:{next(iter(sorted(found)), default_name)}."
        )
    obj: object = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            close = difflib.get_close_matches(attr, list(found), n=1)
            hint = f" Did you mean {source}:{close[0]}?" if close else ""
            raise TargetError(
                f"{source} has no attribute {attr!r}. {noun} objects it defines at module level: {listing}.{hint}"
            )
        obj = getattr(obj, part)
    if not isinstance(obj, kind):
        raise TargetError(
            f"{source}:{attr} is a {type(obj).__name__}, not a chainette {noun}. "
            f"{noun} objects in {source}: {listing}."
        )
    return obj


def count_jsonl_records(path: Path, *, max_bytes: int = 2 << 30) -> int | None:
    """Non-empty lines of a JSONL file, counted in C-speed chunks (None if unreadable or huge)."""
    try:
        if path.stat().st_size > max_bytes:
            return None
        count = 0
        carry = b""
        with path.open("rb") as handle:
            while block := handle.read(1 << 20):
                block = carry + block
                cut = block.rfind(b"\n") + 1
                whole, carry = block[:cut], block[cut:]
                count += whole.count(b"\n") - sum(1 for _ in _BLANK_LINE.finditer(whole))
        return count + (1 if carry.strip() else 0)
    except OSError:
        return None


def _import_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise TargetError(f"No such file: {str(path)!r} (looked in {Path.cwd()}). TARGET is {TARGET_FORMS}.")
    resolved = path.resolve()
    name = _module_name(resolved)
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise TargetError(f"{path} cannot be imported as a Python module; point TARGET at a .py file.")
    module = importlib.util.module_from_spec(spec)
    previous = sys.modules.get(name)
    # Registered before running it, as a normal import does: pydantic resolves the module's
    # forward references (``from __future__ import annotations``) through sys.modules.
    sys.modules[name] = module
    try:
        with on_sys_path(resolved.parent):
            spec.loader.exec_module(module)
    except Exception as exc:
        if previous is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = previous
        _raise_import_failure(str(path), resolved, exc)
    return module


def _import_module(name: str) -> ModuleType:
    try:
        with on_sys_path(Path.cwd()):
            return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            raise TargetError(
                f"No module named {exc.name!r} (tried to import {name!r} from {Path.cwd()} and the "
                f"installed packages). Run from the folder that contains it, install its package, or "
                f"give a file path instead: path/to/{name.rpartition('.')[2]}.py:chain_variable."
            ) from None
        _raise_import_failure(name, None, exc)
    except Exception as exc:
        _raise_import_failure(name, None, exc)


def _module_name(path: Path) -> str:
    stem = re.sub(r"\W", "_", path.stem) or "chain_module"
    if stem[0].isdigit():
        stem = f"_{stem}"
    existing = sys.modules.get(stem)
    if existing is None or getattr(existing, "__file__", None) == str(path):
        return stem
    return f"{stem}_{hashlib.blake2b(str(path).encode(), digest_size=4).hexdigest()}"


def _raise_import_failure(what: str, file: Path | None, exc: Exception) -> NoReturn:
    """Re-raise a ChainetteError from the module (noting where); wrap anything else."""
    where = what
    if isinstance(exc, SyntaxError) and exc.lineno:
        where = f"{exc.filename or what}, line {exc.lineno}"
    tb = None if isinstance(exc, SyntaxError) else exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if file is None or filename == str(file):
            where = f"{what if file else filename}, line {tb.tb_lineno}"
        tb = tb.tb_next
    if isinstance(exc, ChainetteError):
        exc.add_note(f"(raised while importing {where})")
        raise exc
    rerun = f"python {what}" if file else f"python -c 'import {what}'"
    raise TargetError(
        f"Importing {what} failed: {type(exc).__name__}: {exc} ({where}). "
        f"Fix the module; `{rerun}` shows the full traceback."
    ) from exc
