"""``Sink``: a node that writes chosen fields (or a projection) of each record it sees to one
JSONL, CSV or Parquet file, and passes the record on unchanged (BatchFactory's
``WriteJsonl(path, output_fields=[...])``).

The file is named relative to the run folder (a plain file name: ``answers.csv``) or by an
absolute path; its format comes from its suffix. The runtime's run writer writes it in blocks
with the run's other files and closes it when the run ends, however it ends.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

from .._errors import ChainDefinitionError
from ..io.file_sink import FILE_FORMATS, file_format
from ..io.layout import LOCK, MARKER, RESERVE, is_reserved
from .contract import Checker, Node, Scope
from .fields import check_fields, field_map
from .ids import check_id

if TYPE_CHECKING:
    from pydantic import BaseModel

__all__ = ["Sink"]

_RUN_FILES = frozenset(
    {"graph.json", "metadata.json", "failures.jsonl", "experiment.json", MARKER, LOCK, RESERVE}
)


class Sink(Node):
    """Write chosen fields of each record's value (or what ``project`` makes of it) to a file.

    The record goes on unchanged. ``fields`` are checked against the model that reaches the node
    before any request is sent (an error names the field, with a did-you-mean). With neither
    ``fields`` nor ``project`` the whole value is written.

    Args:
        path: ``answers.csv`` (in the run folder) or an absolute path; ``.jsonl``, ``.csv`` or
            ``.parquet``. Started empty by each run (a resumed run writes it again whole).
        fields: Field names (``["question", "answer"]``), or ``{column: field}`` to rename.
        project: ``fn(value) -> dict | BaseModel``: the row to write, computed from the value
            (for CSV / Parquet every row must have the same keys, else the record fails here).
        id: The node's id (default ``sink_<file stem>``).

    Example:
        >>> from chainette import Sink
        >>> Sink("answers.csv", fields=["question", "answer"]).format
        'csv'
    """

    kind = "sink"
    passes_through = True

    def __init__(
        self,
        path: str | Path,
        *,
        fields: Sequence[str] | Mapping[str, str] | None = None,
        project: Callable[[Any], Any] | None = None,
        id: str | None = None,
        name: str | None = None,
    ) -> None:
        target = str(path)
        fmt = file_format(target)
        where = f"Sink({target!r})"
        if fmt is None:
            raise ChainDefinitionError(
                f"{where}: the file must end in {', '.join(FILE_FORMATS)} (its format), e.g. 'answers.csv'."
            )
        pure = PurePath(target)
        if not pure.is_absolute() and (
            len(pure.parts) != 1 or pure.name in _RUN_FILES or is_reserved(pure.stem)
        ):
            raise ChainDefinitionError(
                f"{where}: a relative path names a file in the run folder (like 'answers.csv'), and may not "
                "be a folder path or one of the run's own files; for a file elsewhere give an absolute path "
                "(str(Path('out/answers.csv').resolve()))."
            )
        if fields is not None and project is not None:
            raise ChainDefinitionError(f"{where}: give fields= or project=, not both.")
        if project is not None and not callable(project):
            raise ChainDefinitionError(f"{where}: project must be a function of the value, got {project!r}.")
        self.path = target
        self.format = fmt
        self.fields = field_map(fields, where)
        self.project = project
        self.id = check_id(id or "sink_" + re.sub(r"\W", "_", pure.stem), self.kind)
        self.name = name or self.id
        self.input_model = None
        self.output_model = None
        self.writes_to = target

    def check(
        self, checker: Checker, scope: Scope, current: type[BaseModel] | None, prev: Node | None
    ) -> type[BaseModel] | None:
        check_fields(checker, self, self.fields, current)
        return current

    def describe(self) -> dict[str, Any]:
        described = {**super().describe(), "path": self.path, "format": self.format}
        if self.fields is not None:
            described["fields"] = self.fields
        return described
