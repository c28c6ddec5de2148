"""Engines by name: ``register_engine`` / ``engines.yml`` and lazy back-end import.

A back-end is data: a name mapped to ``"module:Class"``, imported only when an engine of that
kind is first started. Adding a back-end is one line in :data:`BACKENDS`.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .._errors import EngineConfigError, MissingDependencyError, UnknownEngineError
from .base import Engine

__all__ = [
    "BACKENDS",
    "EngineConfig",
    "create_engine",
    "get_engine_config",
    "list_engines",
    "load_engines",
    "register_engine",
    "unregister_engine",
]

BACKENDS: dict[str, str] = {
    "llama_cpp": "chainette.engines.llama_cpp:LlamaCppEngine",
    "fake": "chainette.engines.fake:FakeEngine",
}
"""Back-end name → ``"module:Class"``. Modules are imported lazily."""

_EXTRAS: dict[str, str] = {"llama_cpp": "llama"}
"""Back-end name → the pip extra that installs its dependencies."""

_SECRET_HINTS = ("key", "token", "secret", "password", "authorization")


class EngineConfig(BaseModel):
    """A named engine: which back-end, which model, and back-end options.

    Example:
        >>> EngineConfig(name="local", backend="fake").backend
        'fake'
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    """The name steps use in ``engine_name``."""
    backend: str = "llama_cpp"
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
            raise ValueError(f"unknown backend {value!r}; known backends: {', '.join(sorted(BACKENDS))}")
        return value

    def public_options(self) -> dict[str, Any]:
        """Options safe to write into run artefacts: anything that looks like a secret is hidden."""
        return {
            k: ("***" if any(h in k.lower() for h in _SECRET_HINTS) else v) for k, v in self.options.items()
        }


_REGISTRY: dict[str, EngineConfig] = {}


def register_engine(
    name: str, backend: str = "llama_cpp", model: str | None = None, **options: Any
) -> EngineConfig:
    """Register an engine under ``name`` so steps can use it via ``engine_name``.

    Registering the same name again replaces the earlier definition. Nothing is loaded here:
    the engine starts when the first step that needs it runs.

    Example:
        >>> cfg = register_engine("demo-fake", backend="fake")
        >>> get_engine_config("demo-fake").backend
        'fake'
    """
    lazy = bool(options.pop("lazy", True))
    try:
        config = EngineConfig(name=name, backend=backend, model=model, lazy=lazy, options=options)
    except ValidationError as exc:
        raise EngineConfigError(_describe_validation(exc, f"engine {name!r}")) from exc
    _REGISTRY[name] = config
    return config


def unregister_engine(name: str) -> None:
    """Forget an engine definition (no-op when unknown)."""
    _REGISTRY.pop(name, None)


def get_engine_config(name: str) -> EngineConfig:
    """Return the registered engine ``name`` or raise :class:`UnknownEngineError` naming the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownEngineError(unknown_engine_message(name)) from None


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
    if not isinstance(data, dict) or not isinstance(data.get("engines"), list):
        raise EngineConfigError(f"{path}: expected a top-level 'engines:' list of engine definitions.")
    configs: list[EngineConfig] = []
    for i, entry in enumerate(data["engines"]):
        where = f"{path}: engines[{i}]"
        if not isinstance(entry, dict):
            raise EngineConfigError(f"{where}: expected a mapping with at least 'name', got {entry!r}.")
        entry = dict(entry)
        fields = {k: entry.pop(k) for k in ("name", "backend", "model", "lazy") if k in entry}
        extra_options = entry.pop("options", {}) or {}
        if not isinstance(extra_options, dict):
            raise EngineConfigError(f"{where}.options: expected a mapping.")
        if "name" in fields:
            where = f"{path}: engine {fields['name']!r}"
        try:
            configs.append(EngineConfig(**fields, options={**entry, **extra_options}))
        except ValidationError as exc:
            raise EngineConfigError(_describe_validation(exc, where)) from exc
    if register:
        for config in configs:
            _REGISTRY[config.name] = config
    return configs


def _describe_validation(exc: ValidationError, where: str) -> str:
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(root)"
        parts.append(f"field '{field}': {err['msg']}")
    return f"{where}: " + "; ".join(parts)


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
    cls: Callable[..., Engine] = _load_backend_class(config.backend)
    try:
        return cls(model=config.model, **config.options)
    except TypeError as exc:
        raise EngineConfigError(f"engine {config.name!r} ({config.backend}): {exc}") from exc
