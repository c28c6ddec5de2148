"""Engines by name: ``register_engine`` / ``engines.yml`` and lazy back-end import.

A back-end is data: a name mapped to ``"module:Class"``, imported only when an engine of that
kind is first started. Adding a back-end is one line in :data:`BACKENDS`.

:func:`get_engine_config` also consults ``servers.json`` (:mod:`.server_state`): a name with a
server that ``chainette warmup`` started, still running, resolves to an ``openai`` engine
pointing at it. :func:`is_registered` reads no file, for checks that must not depend on the
working folder. This module never imports :mod:`.servers` (which imports it).
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from .._errors import EngineConfigError, MissingDependencyError, UnknownEngineError
from . import server_state
from .base import Engine
from .secrets import looks_secret, remember_secrets, scrub
from .seed_compat import VLLM_ONLY_OPTIONS, vllm_options

__all__ = [
    "BACKENDS",
    "EngineConfig",
    "create_engine",
    "engines_from",
    "get_engine_config",
    "is_registered",
    "list_engines",
    "load_engines",
    "register_config",
    "register_engine",
    "replaced_by_server",
    "replaced_message",
    "running_engine_config",
    "unregister_engine",
]

BACKENDS: dict[str, str] = {
    "llama_cpp": "chainette.engines.llama_cpp:LlamaCppEngine",
    "openai": "chainette.engines.openai_http:OpenAIEngine",
    "openai_batch": "chainette.engines.openai_batch:OpenAIBatchEngine",
    "vllm": "chainette.engines.vllm:VLLMEngine",
    "fake": "chainette.engines.fake:FakeEngine",
}
"""Back-end name → ``"module:Class"``. Modules are imported lazily."""

DEFAULT_BACKEND = "llama_cpp"
"""The back-end of a definition that names none and uses no option only vLLM takes."""

_EXTRAS: dict[str, str] = {"llama_cpp": "llama", "openai": "http", "openai_batch": "http", "vllm": "vllm"}
"""Back-end name → the pip extra that installs its dependencies."""

LIFECYCLE_OPTIONS = frozenset({"idle_timeout", "serve"})
"""Options read by the broker and ``chainette warmup``, not passed to the back-end class."""


class EngineConfig(BaseModel):
    """A named engine: which back-end, which model, and back-end options.

    Example:
        >>> EngineConfig(name="local", backend="fake").backend
        'fake'
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    """The name steps use in ``engine_name``."""
    backend: str = DEFAULT_BACKEND
    """One of :data:`BACKENDS`."""
    model: str | None = None
    """Model identity for the back-end (a GGUF path for ``llama_cpp``; ``None`` = default model)."""
    lazy: bool = True
    """Start on first use (always true for embedded engines; kept for seed compatibility)."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Back-end specific keyword arguments (``n_ctx``, ``n_threads``, ...)."""

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if value not in BACKENDS:
            close = difflib.get_close_matches(value, sorted(BACKENDS), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(
                f"unknown backend {value!r}{hint}; known backends: {', '.join(sorted(BACKENDS))}"
            )
        return value

    def model_post_init(self, context: Any, /) -> None:
        remember_secrets(self.options)  # so error texts that repeat them are scrubbed too

    def public_options(self) -> dict[str, Any]:
        """Options safe to write into run artefacts, logs and listings (:func:`.secrets.scrub`):
        secret-looking keys hidden at any depth, URL passwords and secret query parameters masked."""
        options: dict[str, Any] = scrub(self.options)
        return options

    @property
    def backend_options(self) -> dict[str, Any]:
        """The options passed to the back-end class (without broker / warmup options)."""
        return {k: v for k, v in self.options.items() if k not in LIFECYCLE_OPTIONS}


_REGISTRY: dict[str, EngineConfig] = {}


def register_engine(
    name: str, backend: str | None = None, model: str | None = None, **options: Any
) -> EngineConfig:
    """Register an engine under ``name`` so steps can use it via ``engine_name``.

    Registering the same name again replaces the earlier definition. Nothing is loaded here:
    the engine starts when the first step that needs it runs. Without ``backend``, options that
    only vLLM takes (``dtype``, ``gpu_memory_utilization``...) mean ``vllm``, else ``llama_cpp``
    (:mod:`.seed_compat`).

    Example:
        >>> cfg = register_engine("demo-fake", backend="fake")
        >>> get_engine_config("demo-fake").backend
        'fake'
    """
    lazy = bool(options.pop("lazy", True))
    config = _make_config(
        f"engine {name!r}", name=name, backend=backend, model=model, lazy=lazy, options=options
    )
    _REGISTRY[name] = config
    return config


def register_config(config: EngineConfig) -> None:
    """Register a definition already built and checked (e.g. one a process received from the one
    that registered it: the Ray executor's workers get the driver's), under its own name."""
    _REGISTRY[config.name] = config


def unregister_engine(name: str) -> None:
    """Forget an engine definition (no-op when unknown)."""
    _REGISTRY.pop(name, None)


def get_engine_config(name: str) -> EngineConfig:
    """Return the engine ``name`` or raise :class:`UnknownEngineError` naming the known ones.

    A server started by ``chainette warmup`` under this name, and still running, wins over the
    registered definition: the engine then talks to that server over HTTP.
    """
    served = running_engine_config(name)
    if served is not None:
        return served
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownEngineError(unknown_engine_message(name)) from None


def is_available(name: str) -> bool:
    """Registered in this process, or answered by a running ``chainette warmup`` server (reads
    ``.chainette/servers.json``): the names a run accepts."""
    try:
        get_engine_config(name)
    except UnknownEngineError:
        return False
    return True


def is_registered(name: str) -> bool:
    """Is ``name`` registered in this process (``register_engine``, ``load_engines``)?

    Reads no file: a server started by ``chainette warmup`` does not count, so the answer does
    not depend on the working folder (static checks use this).

    Example:
        >>> _ = register_engine("demo-known", backend="fake")
        >>> is_registered("demo-known"), is_registered("demo-unknown")
        (True, False)
    """
    return name in _REGISTRY


def running_engine_config(name: str) -> EngineConfig | None:
    """An ``openai`` engine definition for the server ``chainette warmup`` started as ``name``, if it
    is still running (else ``None``)."""
    record = server_state.running_server(name)
    if record is None:
        return None
    registered = _REGISTRY.get(name)
    options = server_state.client_engine_options(record, registered.options if registered else None)
    return EngineConfig(name=name, backend="openai", model=record.model, options=options)


def replaced_by_server(name: str) -> dict[str, Any] | None:
    """What a running ``chainette warmup`` server puts in place of the engine registered in this
    process under ``name`` (the server wins: :func:`get_engine_config`); None when nothing is
    replaced (no such server, or nothing registered under that name)."""
    registered = _REGISTRY.get(name)
    if registered is None:
        return None
    record = server_state.running_server(name)
    if record is None:
        return None
    return {
        "kind": record.kind,
        "base_url": record.base_url,
        "pid": record.pid,
        "model": record.model,
        "registered": {"backend": registered.backend, "model": registered.model},
    }


def replaced_message(name: str, replaced: Mapping[str, Any]) -> str:
    """The warning for an engine a warmup server replaces (see :func:`replaced_by_server`)."""
    registered = replaced["registered"]
    return (
        f"Engine {name!r} is registered in code (backend {registered['backend']}), but a server started by "
        f"`chainette warmup` answers to that name ({replaced['kind']} at {replaced['base_url']}, pid "
        f"{replaced['pid']}): requests to {name!r} go to that server. Run `chainette kill {name}` to use "
        "the registered engine, or register it under another name."
    )


def unknown_engine_message(name: str, where: str = "") -> str:
    known = sorted(_REGISTRY)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    listing = ", ".join(repr(k) for k in known) or "none"
    prefix = f"{where} uses" if where else "No"
    return (
        f"{prefix} engine {name!r}{hint}, which is not registered. Registered engines: {listing}. "
        "Register it with chainette.register_engine(...) or pass --engines engines.yml."
    )


def list_engines() -> list[EngineConfig]:
    """All registered engines, sorted by name."""
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def load_engines(path: str | Path, *, register: bool = True) -> list[EngineConfig]:
    """Read an ``engines.yml`` file and (by default) register every engine in it.

    The file holds ``engines:``, a list of mappings with ``name``, optional ``backend`` and
    ``model``, and back-end options as further keys::

        engines:
          - name: local
            backend: llama_cpp
            n_ctx: 4096
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EngineConfigError(f"{path}: no such engines file.") from None
    except yaml.YAMLError as exc:
        raise EngineConfigError(f"{path}: not valid YAML: {exc}") from exc
    return engines_from(data, str(path), register=register)


def engines_from(data: Any, source: str, *, register: bool = True) -> list[EngineConfig]:
    """Engine definitions from parsed YAML (``{"engines": [...]}``), as :func:`load_engines`
    reads them; ``source`` names where they came from in error messages."""
    if not isinstance(data, dict) or not isinstance(data.get("engines"), list):
        raise EngineConfigError(f"{source}: expected a top-level 'engines:' list of engine definitions.")
    configs: list[EngineConfig] = []
    for i, entry in enumerate(data["engines"]):
        where = f"{source}: engines[{i}]"
        if not isinstance(entry, dict):
            raise EngineConfigError(f"{where}: expected a mapping with at least 'name', got {entry!r}.")
        entry = dict(entry)
        fields = {k: entry.pop(k) for k in ("name", "backend", "model", "lazy") if k in entry}
        extra_options = entry.pop("options", {}) or {}
        if not isinstance(extra_options, dict):
            raise EngineConfigError(f"{where}.options: expected a mapping.")
        if "name" in fields:
            where = f"{source}: engine {fields['name']!r}"
        configs.append(_make_config(where, **fields, options={**entry, **extra_options}))
    if register:
        for config in configs:
            _REGISTRY[config.name] = config
    return configs


def _make_config(where: str, *, backend: Any = None, options: dict[str, Any], **fields: Any) -> EngineConfig:
    """A checked :class:`EngineConfig`; without ``backend``, the back-end its options imply."""
    assumed = ""
    if backend is None:
        implied = sorted(VLLM_ONLY_OPTIONS.intersection(options))
        backend = "vllm" if implied else DEFAULT_BACKEND
        reason = f" from option {implied[0]!r}" if implied else " (the default)"
        assumed = (
            f" No 'backend:' was given, so {backend!r} was assumed{reason}: if this engine is of another "
            f"kind, add 'backend:' ({', '.join(sorted(BACKENDS))}) and keep only that back-end's options."
        )
    if backend == "vllm":
        options = vllm_options(options, where)
    try:
        config = EngineConfig(backend=backend, options=options, **fields)
    except ValidationError as exc:
        raise EngineConfigError(_describe_validation(exc, where)) from exc
    check_options(config, where, assumed=assumed)
    return config


def _describe_validation(exc: ValidationError, where: str) -> str:
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(root)"
        message = err["msg"].removeprefix("Value error, ")
        parts.append(f"field '{field}': {message}")
    return f"{where}: " + "; ".join(parts)


def check_options(config: EngineConfig, where: str, *, assumed: str = "") -> None:
    """Reject a definition the back-end class cannot be built from, before any request: an option
    it does not take (with a did-you-mean), a required option missing (``base_url`` for
    ``openai``), or a value of the wrong type. Each message names the engine, the option and what
    to write instead.

    ``assumed`` ends the message when the back-end was inferred rather than named.

    The back-end module is imported to read its signature; when its optional dependency is
    missing the check is skipped here and the missing package is reported at start.
    """
    try:
        cls = _load_backend_class(config.backend)
    except MissingDependencyError:
        return
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        _check_known(config, where, params, assumed)
    _check_required(config, where, params)
    _check_types(config, where, cls, params)


def _check_known(
    config: EngineConfig, where: str, params: Mapping[str, inspect.Parameter], assumed: str
) -> None:
    known = sorted(k for k in params if k not in ("self", "model"))
    for option in config.backend_options:
        if option in params and option != "self":
            continue
        if looks_secret(option):
            raise EngineConfigError(
                f"{where}: option {option!r} looks like a secret. Engine definitions are written to "
                "graph.json and metadata.json, so keys do not belong there: put the key in an environment "
                "variable and pass its name, e.g. api_key_env: OPENAI_API_KEY."
            )
        close = difflib.get_close_matches(option, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise EngineConfigError(
            f"{where}: unknown option {option!r} for backend {config.backend!r}{hint}. "
            f"Known options: {', '.join(known + sorted(LIFECYCLE_OPTIONS))}.{assumed}"
        )


def _check_required(config: EngineConfig, where: str, params: Mapping[str, inspect.Parameter]) -> None:
    """An option the back-end class needs (no default) and the definition lacks. A ``serve:``
    section stands in for ``base_url``: ``chainette warmup`` starts the server and fills it in."""
    served = "serve" in config.options
    for name, param in params.items():
        if name in ("self", "model") or param.default is not inspect.Parameter.empty:
            continue
        if param.kind in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL):
            continue
        if name in config.backend_options or (served and name == "base_url"):
            continue
        example = _REQUIRED_EXAMPLES.get(name, f"{name}=...")
        raise EngineConfigError(
            f"{where}: backend {config.backend!r} needs option {name!r}, which is missing. "
            f"Add it to the definition (e.g. {example}, or '{name}:' in engines.yml)."
        )


_REQUIRED_EXAMPLES = {"base_url": "base_url='http://127.0.0.1:8000/v1'"}
"""How a missing required option is written, for the message."""


def _check_types(
    config: EngineConfig, where: str, cls: type[Engine], params: Mapping[str, inspect.Parameter]
) -> None:
    """Each option's value against the back-end's annotation (pydantic, strict: ``"4096"`` is not
    an int, ``60`` is a float). An annotation that cannot be resolved is not checked."""
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # a name only imported under TYPE_CHECKING: check nothing rather than guess
        hints = {}
    for option, value in config.backend_options.items():
        hint = hints.get(option)
        if hint is None or option not in params:
            continue
        try:
            adapter = _adapter(hint)
        except Exception:  # pydantic cannot build a validator for this annotation: not checked
            continue
        try:
            adapter.validate_python(value, strict=True)
        except ValidationError as exc:
            expected = getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
            raise EngineConfigError(
                f"{where}: option {option!r} of backend {config.backend!r} is {value!r} "
                f"({type(value).__name__}): {exc.errors()[0]['msg']}. Give a value of type {expected}."
            ) from None


@functools.lru_cache(maxsize=256)
def _adapter(hint: Any) -> TypeAdapter[Any]:
    return TypeAdapter(hint)


def _load_backend_class(backend: str) -> type[Engine]:
    target = BACKENDS[backend]
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        extra = _EXTRAS.get(backend)
        hint = f" Install it with: pip install 'chainette[{extra}]'" if extra else ""
        raise MissingDependencyError(
            f"Backend {backend!r} needs a package that is not installed ({exc}).{hint}"
        ) from exc
    cls: type[Engine] = getattr(module, class_name)
    return cls


def create_engine(config: EngineConfig) -> Engine:
    """Instantiate (but do not start) the engine described by ``config``."""
    if config.backend == "openai" and "serve" in config.options and "base_url" not in config.options:
        raise EngineConfigError(
            f"engine {config.name!r} is served locally (it has a 'serve:' section and no base_url), but no "
            f"server of that name is running. Start it first: chainette warmup -f engines.yml -e {config.name}"
        )
    cls: Callable[..., Engine] = _load_backend_class(config.backend)
    try:
        engine = cls(model=config.model, **config.backend_options)
    except TypeError as exc:
        raise EngineConfigError(f"engine {config.name!r} ({config.backend}): {exc}") from exc
    engine.name = config.name
    return engine
