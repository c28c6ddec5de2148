"""``Experiment``: a chain (built from a typed config) run over a suite, each case assessed.

How GoTaglio's stages map: *prepare*, *infer* and *extract* are the chain (templates render the
prompt, a ``Step`` calls the engine, the output model and ``apply`` nodes parse and extract);
*assess* is the experiment's assessors, run after the chain on each case's final output.

How a case travels: the suite is checked against the chain's input model; every case's first
input goes, in suite order, into one ``run_chain`` (the run folder as for any run); a record's
``_index`` is its case's position, so flattened rows and failures join back to their case by
``_index`` (the record ids stay the runtime's own). A multi-turn case's later turns run in
rounds, one nested run folder per round (``experiment/turn-<k>/``), each input given the
conversation so far in its ``history`` field. Then the assessors run (an LLM judge in
``experiment/judge-<step id>/``), and ``experiment.json`` is written into the run folder.
Every one of these runs is traced (``record_trace``), so each case also gets its timeline,
duration, tokens and cost (see :mod:`.timing`); the totals add up all of the runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
from pydantic import BaseModel

from .._errors import ExperimentError
from ..graph.chain import ChainGraph
from ..io.layout import EXPERIMENT_RUNS
from ..runtime.executor import run_chain
from ..runtime.result import RunResult
from .assess import Assessor, JudgeAssessor, combine, function, typed_output
from .config import merge_overrides, public_config
from .record import CaseResult, ExperimentResult, command_line, git_info, totals, write_experiment_json
from .suite import HISTORY_FIELD, Case, Suite, load_suite
from .timing import TracedRun, case_figures, prices_of, sum_figures, wall_clock

__all__ = ["Experiment"]

ChainFactory = Callable[[Any], ChainGraph]

_FIRST_RUN_ONLY = ("overwrite", "resume", "on_event", "middleware")
"""Run options the later turns and the judges do not get: their folders are new ones inside the
run's, and listeners (a live display, a JSON log) follow the chain's first run only."""


class Experiment:
    """A chain, a suite of cases, assessors and a typed config, run as one.

    Args:
        name: Recorded in ``experiment.json``.
        chain_factory: ``fn(config) -> Chain`` (built for each run's merged config), or a Chain.
        suite: A :class:`Suite`, a list of cases, or a ``.jsonl`` / ``.yaml`` path.
        assessors: Each case is assessed by every one (see :mod:`chainette.experiments.assess`);
            a plain ``fn(case, output)`` is wrapped by :func:`~chainette.experiments.assess.function`.
        config: The config: a Pydantic model class (its defaults, plus overrides) or an instance
            (its values, plus overrides). None: no config; overrides are refused.

    Example:
        >>> exp = Experiment("calc", build_chain, "cases.jsonl", [numeric("answer")], Config)  # doctest: +SKIP
        >>> result = exp.run(overrides=["sampling.temperature=0"])                            # doctest: +SKIP
        >>> result.pass_rate                                                                  # doctest: +SKIP
    """

    def __init__(
        self,
        name: str,
        chain_factory: ChainFactory | ChainGraph,
        suite: Suite | str | Path | Sequence[Case | dict[str, Any]],
        assessors: Sequence[Assessor | Callable[[Case, Any], Any]] = (),
        config: type[BaseModel] | BaseModel | None = None,
    ) -> None:
        self.name = name
        self.chain_factory = chain_factory
        self.suite = suite
        self.config = config
        self.assessors: list[Assessor] = []
        for assessor in assessors:
            if not isinstance(assessor, Assessor) and not callable(assessor):
                raise ExperimentError(
                    f"Experiment {name!r}: {assessor!r} is not an assessor; use exact(), numeric(), "
                    "llm_judge(step) or a function fn(case, output) -> bool | float | Assessment."
                )
            self.assessors.append(assessor if isinstance(assessor, Assessor) else function(assessor))

    def resolve_config(self, overrides: Sequence[str] = ()) -> BaseModel | None:
        """The config for ``overrides`` (validated; Required fields checked)."""
        if self.config is None:
            if overrides:
                raise ExperimentError(
                    f"Experiment {self.name!r} has no config, so overrides ({', '.join(overrides)}) cannot apply."
                )
            return None
        if isinstance(self.config, BaseModel):
            return merge_overrides(type(self.config), self.config, overrides)
        return merge_overrides(self.config, {}, overrides)

    def build(self, config: BaseModel | None) -> ChainGraph:
        """The chain for ``config``."""
        if isinstance(self.chain_factory, ChainGraph):
            return self.chain_factory
        chain = self.chain_factory(config)
        if not isinstance(chain, ChainGraph):
            raise ExperimentError(
                f"Experiment {self.name!r}: chain_factory returned {type(chain).__name__}, not a Chain."
            )
        return chain

    def run(
        self,
        output_dir: str | Path | None = None,
        overrides: Sequence[str] = (),
        *,
        target: str | None = None,
        engines: str | Path | None = None,
        **run_options: Any,
    ) -> ExperimentResult:
        """Run the experiment (blocking). See :meth:`arun`."""

        async def main() -> ExperimentResult:
            return await self.arun(output_dir, overrides, target=target, engines=engines, **run_options)

        return anyio.run(main)

    async def arun(
        self,
        output_dir: str | Path | None = None,
        overrides: Sequence[str] = (),
        *,
        target: str | None = None,
        engines: str | Path | None = None,
        **run_options: Any,
    ) -> ExperimentResult:
        """Build the chain for the merged config, run it over the suite, assess every case and write
        ``experiment.json`` into the run folder.

        Args:
            output_dir: The run folder (default: the chain's, ``runs/<chain>-<run id>``).
            overrides: ``"dotted.key=value"`` config overrides.
            target: ``path.py:name`` of this experiment, and ``engines``: the engines.yml given;
                recorded in ``experiment.json`` (``rerun``) so ``chainette runs rerun`` can run it again.
            **run_options: As for ``Chain.run`` (``overwrite``, ``ledger``, ``cache``, ``middleware``, ...).
        """
        config = self.resolve_config(overrides)
        chain = self.build(config)
        suite = load_suite(self.suite)
        suite.check(chain.input_model)
        started = time.time()
        cases = list(suite)
        first = [_turn_input(c, 0, []) for c in cases]
        run_options = {"record_trace": True, **run_options}  # per-case timeline, tokens and cost
        run = await run_chain(chain, first, output_dir, **run_options)
        traced = [TracedRun("run", run.trace, list(range(len(cases))))]
        nested_metas: list[dict[str, Any]] = []
        key = _output_key(chain)
        outcomes = _outcomes(run, key, len(cases))
        conversations: list[list[dict[str, Any]]] = [[] for _ in cases]
        nested = {k: v for k, v in run_options.items() if k not in _FIRST_RUN_ONLY}
        for turn in range(1, max((c.turn_count for c in cases), default=1)):
            todo = [i for i, c in enumerate(cases) if c.turn_count > turn and "error" not in outcomes[i]]
            for i in todo:
                conversations[i].append(
                    {"input": cases[i].inputs()[turn - 1], "output": outcomes[i]["output"]}
                )
            inputs = [_turn_input(cases[i], turn, conversations[i]) for i in todo]
            sub = await run_chain(chain, inputs, run.path / EXPERIMENT_RUNS / f"turn-{turn + 1}", **nested)
            traced.append(TracedRun(f"turn-{turn + 1}", sub.trace, todo))
            nested_metas.append(sub.metadata)
            for j, outcome in enumerate(_outcomes(sub, key, len(todo))):
                outcomes[todo[j]] = {**outcome, "record_id": outcomes[todo[j]]["record_id"]}
        results = [_case_result(c, outcomes[i], conversations[i]) for i, c in enumerate(cases)]
        judged = await self._assess(results, cases, run.path, nested, _output_models(chain, key))
        for result in results:
            if result.status != "error":
                result.status, result.score, result.reason = combine(list(result.assessments.values()))
        prices = prices_of(chain.iter_nodes())
        for label, judge_run, positions, judge in judged:
            traced.append(TracedRun(label, judge_run.trace, positions, judge=True))
            nested_metas.append(judge_run.metadata)
            prices.update(prices_of([judge.step]))
        for result, figures in zip(results, case_figures(traced, len(cases), prices), strict=True):
            result.duration_s, result.tokens, result.cost = (
                figures["duration_s"], figures["tokens"], figures["cost"]
            )  # fmt: skip
            result.by_step, result.timeline = figures["by_step"], figures["timeline"]
        rerun = {"target": target, "overrides": list(overrides), "engines": engines}
        timeline = {"started_at": wall_clock(traced), "spans_not_kept": sum(
            t.trace.dropped for t in traced if t.trace is not None
        )}  # fmt: skip
        return self._finish(run, results, config, suite, started, rerun, nested_metas, timeline)

    async def _assess(
        self,
        results: list[CaseResult],
        cases: list[Case],
        path: Path,
        options: dict[str, Any],
        models: Sequence[type[BaseModel]] = (),
    ) -> list[tuple[str, RunResult, list[int], JudgeAssessor]]:
        """Run every assessor (each gets the output typed as one of ``models``: ``typed_output``);
        the judges' runs (label, run, case index of each input, judge)."""
        judged: list[tuple[str, RunResult, list[int], JudgeAssessor]] = []
        for assessor in self.assessors:
            live = [i for i, r in enumerate(results) if r.status != "error"]
            if isinstance(assessor, JudgeAssessor):
                ran = await _judge(
                    assessor, [results[i] for i in live], [cases[i] for i in live], path, options
                )
                if ran is not None:
                    judged.append((f"judge-{assessor.step.id}", ran, live, assessor))
                continue
            for i in live:
                try:
                    output = typed_output(results[i].output, models)
                    results[i].assessments[assessor.name] = assessor(cases[i], output)
                except Exception as exc:  # a broken assessor marks the case, it does not stop the others
                    _mark_error(results[i], f"assess:{assessor.name}", type(exc).__name__, str(exc))
        return judged

    def _finish(
        self,
        run: RunResult,
        results: list[CaseResult],
        config: BaseModel | None,
        suite: Suite,
        started: float,
        rerun: dict[str, Any],
        nested_metas: list[dict[str, Any]],
        timeline: dict[str, Any],
    ) -> ExperimentResult:
        meta = run.metadata
        summary = totals(results, meta)
        summary.update(sum_figures([meta, *nested_metas]))  # turns and judges count too
        summary["duration_s"] = round(time.time() - started, 3)
        stored = public_config(config) if config is not None else None
        if rerun["engines"] is not None:  # absolute, so a rerun finds it from any folder
            rerun = {**rerun, "engines": str(Path(rerun["engines"]).resolve())}
        data = {
            "experiment": self.name,
            "chain": meta.get("chain"),
            "run_id": run.run_id,
            "command": command_line(),
            "config": stored,
            "rerun": rerun,
            "git": git_info(),
            "versions": meta.get("versions"),
            "suite": {
                "path": str(suite.path) if suite.path else None,
                "sha256": suite.sha256,
                "cases": len(results),
            },
            "run": {
                "status": meta.get("status"),
                "counts": meta.get("counts"),
                "started_at": meta.get("started_at"),
            },
            "totals": summary,
            "timeline_started_at": timeline["started_at"],
            "timeline_spans_not_kept": timeline["spans_not_kept"],
            "cases": [r.as_dict() for r in results],
        }
        write_experiment_json(run.path, data)
        return ExperimentResult(self.name, run.path, run, results, summary, stored, data)


def _turn_input(case: Case, turn: int, history: list[dict[str, Any]]) -> dict[str, Any]:
    value = case.inputs()[turn]
    return {**value, HISTORY_FIELD: history} if case.turns else value


def _output_key(chain: ChainGraph) -> str:
    """The history key of the chain's final output: its last item that does not pass through."""
    for item in reversed(chain.items):
        if not item.passes_through:
            return item.id
    return "input"


def _output_models(chain: ChainGraph, key: str) -> tuple[type[BaseModel], ...]:
    """The models the final output (history key ``key``) may be: its node's output variants."""
    for node in chain.iter_nodes():
        if node.id == key:
            return tuple(node.output_variants)
    return ()


def _output_of(row: dict[str, Any], key: str) -> Any:
    if key in row:
        return row[key]
    prefix = key + "."
    return {
        c[len(prefix) :]: v for c, v in row.items() if c.startswith(prefix) and "." not in c[len(prefix) :]
    }


def _outcomes(run: RunResult, key: str, count: int) -> list[dict[str, Any]]:
    """Per input position: ``{"output", "record_id"}``, or ``{"error", "record_id"}`` when it failed
    (its first failure), or was filtered out."""
    rows: dict[int, list[dict[str, Any]]] = {}
    for row in run.flattened():
        rows.setdefault(int(row["_index"]), []).append(row)
    failed: dict[int, dict[str, Any]] = {}
    for row in run.failures():
        if row.get("emitted"):
            continue
        failed.setdefault(int(row["_index"]), row)
    out: list[dict[str, Any]] = []
    for index in range(count):
        if index in failed:
            f = failed[index]
            error = {"node": f.get("node"), "error_type": f.get("error_type"), "message": f.get("message")}
            out.append({"error": error, "record_id": f.get("_id")})
        elif index in rows:
            found = [_output_of(r, key) for r in rows[index]]
            out.append({"output": found[0] if len(found) == 1 else found, "record_id": rows[index][0]["_id"]})
        else:
            error = {
                "node": None,
                "error_type": "filtered",
                "message": "the chain filtered the case out (no output)",
            }
            out.append({"error": error, "record_id": None})
    return out


def _case_result(case: Case, outcome: dict[str, Any], conversation: list[dict[str, Any]]) -> CaseResult:
    result = CaseResult(
        case.id,
        "unscored",
        expected=case.expected,
        input=case.input,
        metadata=dict(case.metadata),
        record_id=outcome.get("record_id"),
    )
    if case.turns:
        result.turns = [t["output"] for t in conversation]
    if "error" in outcome:
        error = outcome["error"]
        turn = f" (turn {len(conversation) + 1})" if case.turns else ""
        _mark_error(result, error["node"], error["error_type"], f"{error['message']}{turn}")
        return result
    result.output = outcome["output"]
    if result.turns is not None:
        result.turns.append(result.output)
    return result


def _mark_error(result: CaseResult, node: str | None, kind: str | None, message: str) -> None:
    result.status = "error"
    result.error = {"node": node, "error_type": kind, "message": message}
    result.reason = f"{node}: {message}" if node else message
    result.score = None


async def _judge(
    judge: JudgeAssessor, results: list[CaseResult], cases: list[Case], path: Path, options: dict[str, Any]
) -> RunResult | None:
    if not results:
        return None
    chain = ChainGraph(f"judge-{judge.step.id}", [judge.step])
    records = [judge.record(c, r.output) for c, r in zip(cases, results, strict=True)]
    run = await run_chain(chain, records, path / EXPERIMENT_RUNS / f"judge-{judge.step.id}", **options)
    for result, outcome in zip(results, _outcomes(run, judge.step.id, len(results)), strict=True):
        if "error" in outcome:
            e = outcome["error"]
            _mark_error(result, f"assess:{judge.name}", e["error_type"], f"{e['node']}: {e['message']}")
        else:
            result.assessments[judge.name] = JudgeAssessor.verdict(outcome["output"])
    return run
