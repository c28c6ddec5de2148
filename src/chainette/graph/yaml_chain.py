"""Chains written in YAML: models and functions named by import path, steps with their prompts.

``chainette run chain.yaml -i in.jsonl`` and :meth:`Chain.from_yaml` read files like::

    name: qa
    batch_size: 16
    imports: [models]                 # modules searched for bare names (next to the YAML file)
    engines:                          # optional: as in engines.yml
      - {name: local, backend: llama_cpp, n_ctx: 2048}
    steps:
      - step:
          id: qa
          input_model: Question       # or models:Question / pkg.models.Question / file.py:Question
          output_model: Answer        # or a list of models: the union (the answer is one of them)
          engine: local
          sampling: {temperature: 0, max_tokens: 96}
          user_prompt: "Question: {{ text }}"
          policy: {timeout_s: 30, retries: 2, backoff: {base_s: 1}}   # optional: a NodePolicy
      - parallel:
          - branch: {name: fr, join: fr, steps: [{step: {...}}]}
      - apply: {fn: tidy}             # a function, by name or import path
      - router: {id: triage, by: kind, routes: {a: [...], b: [...]}, default: b}
      - map: {id: parts, over: paragraphs, body: [...], join_k: 3}
      - loop: {id: refine, body: [...], until: checks:good_enough, max_iterations: 4}
                                      # max_hops / max_tokens / deadline_s: a number, a field of the
                                      # record (hops), or a function (checks:budget_of), per record
      - dialogue:                     # agents talking in turns (graph/dialogue.py)
          id: lesson
          opening: "Today's text: {{ text }}"
          turns: 4                    # and/or until: checks:done, max_turns: 8
          agents:
            - name: teacher
              system_prompt: You are a patient teacher.
              engine: local
              instructions: ["Explain {{ text }}.", "Answer the question."]   # or a text, or {0: ..., 2: ...}
            - {name: student, system_prompt: You are curious., engine: local, instructions: Ask one question.}
          closing: {agent: teacher, instruction: "Sum up {{ text }}."}
      - take: 100
      - shuffle: {seed: 1, buffer: 1000}
      - subflow: {id: review, chain: review.yaml}   # another chain (a YAML file, or module:chain)

Each entry of ``steps`` is a mapping with one key, the node kind; :data:`KINDS` maps a kind to
the function building it, so a new node kind adds one entry. Every error names the file and the
place in it (``steps[2].step.user_prompt``) and says what to write instead.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import operator
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .._errors import ChainDefinitionError, ChainetteError
from ..engines.base import SamplingParams
from ..engines.registry import engines_from
from .apply import Apply
from .branch import Branch, Parallel
from .contract import ChainBase, Node
from .dialogue import Agent, Dialogue
from .loop import Loop
from .map import Map
from .policy import Backoff, NodePolicy
from .router import Router
from .step import Step
from .stream_ops import Shuffle, Take
from .subflow import Subflow
from .yaml_imports import import_file, on_sys_path

__all__ = ["KINDS", "YamlChainError", "on_sys_path", "read_chain_yaml"]

CHAIN_KEYS = ("name", "batch_size", "emoji", "imports", "engines", "steps")

MakeChain = Callable[..., ChainBase]
"""Builds a chain from ``(name, nodes, **options)``: ``ChainGraph``, handed in by
``ChainGraph.from_yaml`` (the chain sits above this module, which builds a chain only for a
subflow written as another YAML file)."""


class YamlChainError(ChainDefinitionError):
    """A YAML chain file cannot be read into a chain; the message names the file and the place."""


class _Reader:
    """Resolves names for one YAML file and builds its nodes."""

    def __init__(
        self, path: Path, imports: list[str], make_chain: MakeChain, within: tuple[Path, ...] = ()
    ) -> None:
        self.path = path
        self.imports = imports
        self.make_chain = make_chain
        self.within = within
        """The files whose subflows led here (a file may not use itself)."""
        self._modules: dict[str, ModuleType] = {}

    def fail(self, where: str, message: str) -> YamlChainError:
        return YamlChainError(f"{self.path}: {where}: {message}")

    def module(self, name: str, where: str) -> ModuleType:
        if name not in self._modules:
            try:
                if name.endswith(".py"):
                    self._modules[name] = import_file(self.path.parent / name)
                else:
                    with on_sys_path(self.path.parent):
                        self._modules[name] = importlib.import_module(name)
            except ChainetteError:
                raise
            except Exception as exc:
                raise self.fail(
                    where,
                    f"importing {name!r} failed: {type(exc).__name__}: {exc}. Modules are looked up next "
                    f"to the YAML file ({self.path.parent}) and on the Python path.",
                ) from exc
        return self._modules[name]

    def obj(self, ref: Any, where: str) -> Any:
        """``module:Name``, ``pkg.module.Name``, ``file.py:Name``, or a bare name in ``imports``."""
        if not isinstance(ref, str) or not ref:
            raise self.fail(where, f"expected an import path such as 'models:Answer', got {ref!r}.")
        if ":" in ref:
            module_name, _, attr = ref.partition(":")
            candidates = [(module_name, attr)]
        elif "." in ref:
            module_name, _, attr = ref.rpartition(".")
            candidates = [(module_name, attr)]
        else:
            candidates = [(m, ref) for m in self.imports]
            if not candidates:
                raise self.fail(
                    where,
                    f"{ref!r} is a bare name, but the file lists no 'imports:'. Write 'module:{ref}', or add "
                    "'imports: [module]' at the top of the file.",
                )
        for module_name, attr in candidates:
            module = self.module(module_name, where)
            obj: Any = module
            for part in attr.split("."):
                obj = getattr(obj, part, None)
                if obj is None:
                    break
            if obj is not None:
                return obj
        searched = ", ".join(m for m, _ in candidates)
        names = [n for m, _ in candidates for n in vars(self.module(m, where)) if not n.startswith("_")]
        close = difflib.get_close_matches(candidates[0][1], names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise self.fail(where, f"{candidates[0][1]!r} is not defined in {searched}.{hint}")

    def model(self, ref: Any, where: str) -> type[BaseModel]:
        obj = self.obj(ref, where)
        if not (isinstance(obj, type) and issubclass(obj, BaseModel)):
            raise self.fail(where, f"{ref!r} is {obj!r}, not a pydantic model class.")
        return obj

    def function(self, ref: Any, where: str) -> Callable[..., Any]:
        obj = self.obj(ref, where)
        if not callable(obj):
            raise self.fail(where, f"{ref!r} is {obj!r}, not a function.")
        return obj  # type: ignore[no-any-return]

    def nodes(self, items: Any, where: str) -> list[Node | list[Branch]]:
        """A list of node entries (a single entry is taken as a list of one)."""
        if isinstance(items, dict):
            items = [items]
        if not isinstance(items, list) or not items:
            raise self.fail(where, "expected a non-empty list of nodes, each a mapping like '- step: {...}'.")
        return [self.node(item, f"{where}[{k}]") for k, item in enumerate(items)]

    def node(self, item: Any, where: str) -> Node:
        if not isinstance(item, dict) or len(item) != 1:
            raise self.fail(
                where,
                f"expected a mapping with one key, the node kind ({', '.join(KINDS)}), got {item!r}.",
            )
        ((kind, spec),) = item.items()
        build = KINDS.get(kind)
        if build is None:
            close = difflib.get_close_matches(str(kind), list(KINDS), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise self.fail(where, f"unknown node kind {kind!r}; known: {', '.join(KINDS)}.{hint}")
        try:
            return build(self, spec, f"{where}.{kind}")
        except YamlChainError:
            raise
        except ChainDefinitionError as exc:
            raise self.fail(f"{where}.{kind}", str(exc)) from exc

    def fields(
        self, spec: Any, where: str, required: tuple[str, ...], optional: tuple[str, ...]
    ) -> dict[str, Any]:
        """The keys of a node's mapping, checked: every required key there, no unknown key."""
        if not isinstance(spec, dict):
            raise self.fail(where, f"expected a mapping with {', '.join(required)}, got {spec!r}.")
        known = (*required, *optional)
        for key in spec:  # a misspelt key first: "missing 'user_prompt'" would hide the typo
            if key not in known:
                close = difflib.get_close_matches(str(key), list(known), n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise self.fail(where, f"unknown key {key!r}; known: {', '.join(known)}.{hint}")
        missing = [k for k in required if k not in spec]
        if missing:
            raise self.fail(where, f"missing {', '.join(map(repr, missing))}.")
        return dict(spec)


def _step(r: _Reader, spec: Any, where: str) -> Node:
    keys = (
        "name",
        "sampling",
        "system_prompt",
        "output_format_instruction",
        "max_reasks",
        "write",
        "samples",
        "policy",
    )
    f = r.fields(
        spec,
        where,
        ("id", "input_model", "output_model", "user_prompt"),
        ("engine", "engine_name", "on_failure", *keys),
    )
    engine = f.pop("engine", None) or f.pop("engine_name", None)
    if engine is None:
        raise r.fail(
            where, "missing 'engine' (the name of a registered engine, or one in this file's 'engines:')."
        )
    if "sampling" in f:
        f["sampling"] = _sampling(r, f["sampling"], f"{where}.sampling")
    if "policy" in f:
        f["policy"] = _policy(r, f["policy"], f"{where}.policy")
    return Step(
        id=f.pop("id"),
        input_model=r.model(f.pop("input_model"), f"{where}.input_model"),
        output_model=_output_model(r, f.pop("output_model"), f"{where}.output_model"),
        engine_name=engine,
        **f,
    )


def _sampling(r: _Reader, spec: Any, where: str) -> SamplingParams:
    try:
        return SamplingParams(**spec)
    except (TypeError, ValidationError) as exc:
        raise r.fail(where, f"{exc}") from exc


def _policy(r: _Reader, spec: Any, where: str) -> NodePolicy:
    """``{timeout_s, retries, backoff: {base_s, multiplier, cap_s, jitter}, validate}``; the node
    checks the values (its error names it)."""
    f = r.fields(spec, where, (), ("timeout_s", "retries", "backoff", "validate"))
    if "backoff" in f:
        b = r.fields(f["backoff"], f"{where}.backoff", (), ("base_s", "multiplier", "cap_s", "jitter"))
        f["backoff"] = Backoff(**b)
    return NodePolicy(**f)


def _output_model(r: _Reader, ref: Any, where: str) -> Any:
    """A model, or for a list of import paths their union (the model answers one of them)."""
    if not isinstance(ref, list):
        return r.model(ref, where)
    if not ref:
        raise r.fail(where, "expected a model's import path, or a non-empty list of them (a union).")
    models = [r.model(item, f"{where}[{k}]") for k, item in enumerate(ref)]
    return functools.reduce(operator.or_, models)


def _apply(r: _Reader, spec: Any, where: str) -> Node:
    if isinstance(spec, str):
        spec = {"fn": spec}
    f = r.fields(spec, where, ("fn",), ("id", "name", "input_model", "output_model", "write", "policy"))
    for key in ("input_model", "output_model"):
        if key in f:
            f[key] = r.model(f[key], f"{where}.{key}")
    if "policy" in f:
        f["policy"] = _policy(r, f["policy"], f"{where}.policy")
    return Apply(r.function(f.pop("fn"), f"{where}.fn"), **f)


def _branch(r: _Reader, spec: Any, where: str) -> Branch:
    f = r.fields(spec, where, ("name", "steps"), ("join",))
    branch = Branch(f["name"], r.nodes(f["steps"], f"{where}.steps"))
    return branch.join(f["join"]) if f.get("join") else branch


def _parallel(r: _Reader, spec: Any, where: str) -> Node:
    if not isinstance(spec, list) or not spec:
        raise r.fail(where, "expected a list of '- branch: {name, steps, join}' entries.")
    branches = []
    for k, item in enumerate(spec):
        if not (isinstance(item, dict) and set(item) == {"branch"}):
            raise r.fail(f"{where}[{k}]", f"expected '- branch: {{name, steps, join}}', got {item!r}.")
        branches.append(_branch(r, item["branch"], f"{where}[{k}].branch"))
    return Parallel(branches, where=where)


def _router(r: _Reader, spec: Any, where: str) -> Node:
    f = r.fields(spec, where, ("id", "routes"), ("by", "default", "on_no_match", "fan_out", "name"))
    routes_spec = f.pop("routes")
    if not isinstance(routes_spec, dict) or not routes_spec:
        raise r.fail(f"{where}.routes", "expected a mapping of route name (or model import path) to nodes.")
    routes: dict[Any, Any] = {}
    for key, nodes in routes_spec.items():
        route_key: Any = r.model(key, f"{where}.routes") if ":" in str(key) else key
        routes[route_key] = r.nodes(nodes, f"{where}.routes.{key}")
    by = f.pop("by", None)
    if isinstance(by, str) and (":" in by or "." in by):
        by = r.function(by, f"{where}.by")  # an import path: a function; else the name of a field
    default = f.pop("default", None)
    if isinstance(default, str) and ":" in default:
        default = r.model(default, f"{where}.default")
    return Router(f.pop("id"), routes, by=by, default=default, **f)


def _map(r: _Reader, spec: Any, where: str) -> Node:
    keys = ("item_field", "join_k", "on_child_failure", "child_batch", "concurrency", "input_model", "name")
    f = r.fields(spec, where, ("id", "over", "body"), keys)
    over = f.pop("over")
    if isinstance(over, str) and (":" in over or "." in over):
        over = r.function(over, f"{where}.over")  # an import path: a function; else a list field
    if "input_model" in f:
        f["input_model"] = r.model(f["input_model"], f"{where}.input_model")
    return Map(f.pop("id"), r.nodes(f.pop("body"), f"{where}.body"), over=over, **f)


def _loop(r: _Reader, spec: Any, where: str) -> Node:
    keys = (
        "condition",
        "until",
        "times",
        "max_iterations",
        "max_hops",
        "max_tokens",
        "deadline_s",
        "on_limit",
        "on_budget",
        "name",
    )
    f = r.fields(spec, where, ("id", "body"), keys)
    for key in ("condition", "until"):
        if key in f:
            f[key] = r.function(f[key], f"{where}.{key}")
    for key in ("max_hops", "max_tokens", "deadline_s"):  # per record: a field name, or module:function
        if isinstance(f.get(key), str) and ":" in f[key]:
            f[key] = r.function(f[key], f"{where}.{key}")
    return Loop(f.pop("id"), r.nodes(f.pop("body"), f"{where}.body"), **f)


def _dialogue(r: _Reader, spec: Any, where: str) -> Node:
    keys = ("turns", "until", "max_turns", "closing", "input_model", "name", "write")
    f = r.fields(spec, where, ("id", "agents", "opening"), keys)
    agents = f.pop("agents")
    if not isinstance(agents, list) or not agents:
        raise r.fail(f"{where}.agents", "expected a list of agents, each '- {name, system_prompt, engine}'.")
    f["agents"] = [_agent(r, a, f"{where}.agents[{k}]") for k, a in enumerate(agents)]
    if "until" in f:
        f["until"] = r.function(f["until"], f"{where}.until")
    if "input_model" in f:
        f["input_model"] = r.model(f["input_model"], f"{where}.input_model")
    closing = f.get("closing")
    if isinstance(closing, dict):
        c = r.fields(closing, f"{where}.closing", ("agent", "instruction"), ())
        closing = (c["agent"], c["instruction"])
    if closing is not None:
        if not (isinstance(closing, (list, tuple)) and len(closing) == 2):
            raise r.fail(f"{where}.closing", f"expected {{agent: name, instruction: text}}, got {closing!r}.")
        f["closing"] = tuple(closing)
    return Dialogue(f.pop("id"), f.pop("agents"), opening=f.pop("opening"), **f)


def _agent(r: _Reader, spec: Any, where: str) -> Agent:
    """``{name, system_prompt, engine, output_model, sampling, max_reasks, max_chars, instructions}``;
    ``instructions`` a text, a list (one per turn of the agent) or ``{turn: text}`` (turns from 0)."""
    keys = ("output_model", "sampling", "max_reasks", "max_chars", "instructions")
    f = r.fields(spec, where, ("name", "system_prompt"), ("engine", "engine_name", *keys))
    engine = f.pop("engine", None) or f.pop("engine_name", None)
    if engine is None:
        raise r.fail(
            where, "missing 'engine' (the name of a registered engine, or one in this file's 'engines:')."
        )
    if "output_model" in f:
        f["output_model"] = r.model(f["output_model"], f"{where}.output_model")
    if "sampling" in f:
        f["sampling"] = _sampling(r, f["sampling"], f"{where}.sampling")
    turns = f.get("instructions")
    if isinstance(turns, dict):  # YAML keys may be written "0": the agent's turns count from 0
        f["instructions"] = {int(k) if isinstance(k, str) and k.isdigit() else k: v for k, v in turns.items()}
    return Agent(f.pop("name"), f.pop("system_prompt"), engine, **f)


def _take(r: _Reader, spec: Any, where: str) -> Node:
    if isinstance(spec, int):
        spec = {"n": spec}
    f = r.fields(spec, where, ("n",), ("id",))
    return Take(f["n"], id=f.get("id"))


def _shuffle(r: _Reader, spec: Any, where: str) -> Node:
    f = r.fields(spec or {}, where, (), ("seed", "buffer", "id"))
    return Shuffle(**f)


def _subflow(r: _Reader, spec: Any, where: str) -> Node:
    f = r.fields(spec, where, ("id", "chain"), ("name",))
    ref = f["chain"]
    if isinstance(ref, str) and ref.endswith((".yaml", ".yml")):
        path = (r.path.parent / ref).resolve()
        if path in (*r.within, r.path.resolve()):
            raise r.fail(f"{where}.chain", f"{ref!r} uses itself as a subflow (through {r.path.name}).")
        name, nodes, options = _read(path, r.make_chain, (*r.within, r.path.resolve()))
        chain = r.make_chain(name, nodes, **options)
    else:
        chain = r.obj(ref, f"{where}.chain")
        if not hasattr(chain, "as_node"):
            raise r.fail(f"{where}.chain", f"{ref!r} is {chain!r}, not a Chain (or a .yaml chain file).")
    return Subflow(f["id"], chain, name=f.get("name"))


KINDS: dict[str, Callable[[_Reader, Any, str], Node]] = {
    "step": _step,
    "apply": _apply,
    "branch": lambda r, spec, where: Parallel([_branch(r, spec, where)], where=where),
    "parallel": _parallel,
    "router": _router,
    "map": _map,
    "loop": _loop,
    "dialogue": _dialogue,
    "take": _take,
    "shuffle": _shuffle,
    "subflow": _subflow,
}
"""YAML node kind → ``build(reader, spec, where) -> Node``."""


def read_chain_yaml(
    path: str | Path, *, make_chain: MakeChain
) -> tuple[str, list[Node | list[Branch]], dict[str, Any]]:
    """Read a YAML chain file: its name, its nodes and the other chain options (``batch_size``,
    ``emoji``). Engines it defines are registered; a subflow naming another YAML file becomes a
    chain built with ``make_chain``. Raises :class:`YamlChainError`."""
    return _read(Path(path), make_chain, ())


def _read(
    path: Path, make_chain: MakeChain, within: tuple[Path, ...]
) -> tuple[str, list[Node | list[Branch]], dict[str, Any]]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise YamlChainError(f"{path}: no such chain file.") from None
    except yaml.YAMLError as exc:
        raise YamlChainError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or "steps" not in data:
        raise YamlChainError(
            f"{path}: expected a mapping with 'steps:' (and optionally {', '.join(CHAIN_KEYS)})."
        )
    unknown = [k for k in data if k not in CHAIN_KEYS]
    if unknown:
        raise YamlChainError(f"{path}: unknown top-level key {unknown[0]!r}; known: {', '.join(CHAIN_KEYS)}.")
    imports = data.get("imports") or []
    if isinstance(imports, str):
        imports = [imports]
    if not isinstance(imports, list) or not all(isinstance(m, str) for m in imports):
        raise YamlChainError(f"{path}: 'imports' must be a list of module names, got {imports!r}.")
    if data.get("engines"):
        engines_from({"engines": data["engines"]}, str(path))
    reader = _Reader(path, imports, make_chain, within)
    nodes = reader.nodes(data["steps"], "steps")
    options = {k: data[k] for k in ("batch_size", "emoji") if k in data}
    return str(data.get("name") or path.stem), nodes, options
