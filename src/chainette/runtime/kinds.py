"""The built-in node kinds and their runners, registered with ``dispatch.register_runner``.

Importing this module registers them; the executor imports it (and so does anything that runs
a chain through the executor's modules: the service, the Ray worker). It sits above every
runner and the registry, so none of them imports another in a loop: a runner that runs nested
nodes (a loop's body, a map's children) imports ``dispatch``, never this module.
"""

from __future__ import annotations

from ..graph.dialogue import Dialogue
from ..graph.loop import Loop
from ..graph.map import Map
from ..graph.nodes import Apply, Branch, Parallel, Seq, Step
from ..graph.router import Router
from ..graph.show import Show
from ..graph.sink import Sink
from ..graph.stream_ops import Shuffle, Take
from ..graph.subflow import Subflow
from .apply_runner import run_apply
from .dialogue_runner import run_dialogue
from .dispatch import register_runner
from .group_runner import run_branch, run_parallel, run_seq
from .loop_runner import run_loop
from .map_runner import run_map
from .router_runner import run_router
from .sink_runner import run_show, run_sink
from .step_cached import settle_cached
from .step_runner import iter_step, run_step
from .stream_runner import flush_shuffle, run_shuffle, run_take
from .subflow_runner import run_subflow

__all__: list[str] = []

register_runner(Step, run_step, iter_step, settle=settle_cached)
register_runner(Apply, run_apply)
register_runner(Branch, run_branch)
register_runner(Seq, run_seq)
register_runner(Parallel, run_parallel)
register_runner(Router, run_router)
register_runner(Take, run_take)
register_runner(Shuffle, run_shuffle, flush=flush_shuffle)
register_runner(Map, run_map)
register_runner(Dialogue, run_dialogue)
register_runner(Loop, run_loop)
register_runner(Subflow, run_subflow)
register_runner(Sink, run_sink)
register_runner(Show, run_show)
