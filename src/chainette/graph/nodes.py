"""The nodes a chain is made of, in one namespace: ``Step`` (one LLM call, ``step.py``),
``Apply`` / ``apply`` (a Python function, ``apply.py``), ``Branch`` and ``Parallel`` (``branch.py``),
and the contract they all follow, ``Node`` with ``Seq`` (``contract.py``).

Nodes only describe work; ``chainette.runtime`` decides how it runs. Inside ``graph/`` the
modules import the one they need; this one is for the layers above.
"""

from __future__ import annotations

from .apply import Apply, apply
from .branch import Branch, Parallel
from .contract import Node, Seq
from .step import Step

__all__ = ["Apply", "Branch", "Node", "Parallel", "Seq", "Step", "apply"]
