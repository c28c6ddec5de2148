"""Hugging Face ``datasets`` inputs: a ``Dataset``, an ``IterableDataset``, a ``DatasetDict`` (one
split of it), or a folder written by ``save_to_disk``, read by path with ``load_from_disk``
(memory-mapped Arrow files: nothing is downloaded, nothing is loaded whole).

A ``Dataset`` is read in Arrow format (``with_format("arrow").iter``: zero-copy slices of the
memory-mapped table, :data:`~chainette.io.tabular.READ_BATCH_ROWS` rows at a time), so a row is
what its Arrow columns hold (an ``Image`` feature is ``{"bytes", "path"}``, a ``ClassLabel`` its
int), and its id is stable; an ``IterableDataset`` is iterated row by row as it yields them.
``datasets`` is imported only here, when such an input is used: a dataset object given as input
means it is imported already.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from .._errors import InputError, MissingDependencyError
from .columns import ColumnMap, resolve_columns
from .items import InputItem, InputSource, row_item

__all__ = ["DatasetInput", "datasets_module", "is_hf_dataset", "open_dataset", "open_named", "open_saved"]

_KINDS = frozenset({"Dataset", "IterableDataset", "DatasetDict", "IterableDatasetDict"})


def datasets_module() -> Any:
    """The ``datasets`` package, or the error that names the extra."""
    try:
        import datasets
    except ImportError as exc:
        raise MissingDependencyError(
            "Hugging Face datasets need the datasets package. Install it with: pip install 'chainette[datasets]'"
        ) from exc
    return datasets


def is_hf_dataset(obj: Any) -> bool:
    """Whether ``obj`` is one of ``datasets``' dataset classes (without importing ``datasets``)."""
    return any(
        cls.__module__.split(".")[0] == "datasets" and cls.__name__ in _KINDS for cls in type(obj).__mro__
    )


def open_saved(
    path: Path, *, split: str | None, columns: Mapping[str, str] | None, model: type[BaseModel] | None
) -> InputSource:
    """A ``save_to_disk`` folder, memory-mapped by ``load_from_disk``."""
    datasets = datasets_module()
    try:
        loaded = datasets.load_from_disk(str(path))
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(
            f"The folder {str(path)!r} looks like a dataset written by save_to_disk but cannot be loaded "
            f"({type(exc).__name__}: {exc}). Write it again, or pass its data files."
        ) from exc
    return open_dataset(loaded, split=split, columns=columns, model=model, label=path.name)


def open_named(
    name: str, *, split: str | None, columns: Mapping[str, str] | None, model: type[BaseModel] | None
) -> InputSource:
    """A dataset by name (``org/name`` on the Hub, or a local dataset folder or data file), loaded
    with ``datasets.load_dataset``: streamed (``streaming=True``, an ``IterableDataset``) when
    online; offline (``HF_DATASETS_OFFLINE=1`` / ``HF_HUB_OFFLINE=1``) a Hub dataset is read from
    the local cache (memory-mapped Arrow files, never loaded whole)."""
    datasets = datasets_module()
    if not name.strip():
        raise InputError("hf: needs a dataset name after it, e.g. hf:org/name (or hf:./local_folder).")
    local = Path(name).exists()
    offline = bool(getattr(datasets.config, "HF_HUB_OFFLINE", False)) or bool(
        getattr(datasets.config, "HF_DATASETS_OFFLINE", False)
    )
    streaming = local or not offline
    try:
        loaded = datasets.load_dataset(name, split=split, streaming=streaming)
    except (ValueError, KeyError) as exc:
        text = str(exc)
        if split is not None and "split" in text.lower():
            raise InputError(
                f"The dataset {name!r} has no split {split!r} ({text}). Drop --split / split= to see its "
                "splits, or name one of them."
            ) from exc
        raise InputError(f"Cannot load the dataset {name!r}: {type(exc).__name__}: {text}") from exc
    except (OSError, ConnectionError, FileNotFoundError) as exc:
        where = (
            "it is not in the local cache and Hugging Face is offline (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE): "
            "load it once online (or unset those), or pass a local dataset folder (hf:./folder)"
            if offline and not local
            else "check the name (org/name), your network, or pass a local dataset folder (hf:./folder)"
        )
        raise InputError(f"Cannot load the dataset {name!r} ({type(exc).__name__}: {exc}); {where}.") from exc
    return open_dataset(
        loaded, split=None, columns=columns, model=model, label=name, title=f"The dataset {name!r}"
    )


def open_dataset(
    obj: Any,
    *,
    split: str | None,
    columns: Mapping[str, str] | None,
    model: type[BaseModel] | None,
    label: str = "dataset",
    title: str | None = None,
) -> InputSource:
    """One split of ``obj``, its columns checked against ``model`` and ``columns``."""
    kind = next(c.__name__ for c in type(obj).__mro__ if c.__name__ in _KINDS)
    if title is None:
        title = "The dataset" if label == "dataset" else f"The dataset saved in {label!r}"
    if kind.endswith("Dict"):
        splits = sorted(obj.keys())
        if split is None:
            if len(splits) != 1:
                raise InputError(
                    f"{title} ({kind}) holds the splits {', '.join(map(repr, splits))}: pick one with split= "
                    f"(CLI: --split {splits[0] if splits else 'train'})."
                )
            split = splits[0]
        if split not in obj:
            close = difflib.get_close_matches(split, splits, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise InputError(
                f"{title} has no split {split!r}{hint}; its splits: {', '.join(map(repr, splits))}."
            )
        obj = obj[split]
    else:
        own = getattr(obj, "split", None)
        if split is not None and own is not None and str(own) != split:
            raise InputError(
                f"split={split!r} was given, but {title[0].lower() + title[1:]} is one {kind}, split {str(own)!r}: drop split, or pass "
                "the DatasetDict it came from."
            )
        split = split if split is not None else (str(own) if own is not None else None)
    where = f"{label} {split}" if split else label
    available = obj.column_names
    cmap = resolve_columns(where, available, model, columns)
    if cmap.read is not None and available is not None and cmap.read != list(available):
        obj = obj.select_columns(cmap.read)
    return DatasetInput(obj, cmap, where, streamed=kind.startswith("Iterable"))


class DatasetInput(InputSource):
    """Rows of one ``Dataset`` / ``IterableDataset``, named ``<label> <split> row <k>``."""

    def __init__(self, dataset: Any, cmap: ColumnMap, where: str, *, streamed: bool) -> None:
        self.dataset = dataset
        self.cmap = cmap
        self.where = where
        self.streamed = streamed
        self.name = f"the dataset {where!r}" if where != "dataset" else "the dataset"
        self.total = None if streamed else len(dataset)

    def items(self) -> Iterator[InputItem]:
        from .tabular import READ_BATCH_ROWS

        if self.streamed:
            for row, value in enumerate(self.dataset):
                yield self._item(row, value)
            return
        row = 0
        for table in self.dataset.with_format("arrow").iter(batch_size=READ_BATCH_ROWS):
            for value in table.to_pylist():
                yield self._item(row, value)
                row += 1

    def _item(self, row: int, value: Any) -> InputItem:
        where = f"{self.where} row {row}"
        if not isinstance(value, dict):
            return row_item(
                row, None, where, f"{where}: expected a row (a dict), got {type(value).__name__}."
            )
        return row_item(row, self.cmap.value(value), where)
