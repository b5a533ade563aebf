"""What the request path and the servicer read of the served models, and how a request's model
string picks one.

In one process the catalog is the `ModelRegistry` and its models are `ServedModel`s. A front-end
process (server/workers) has no engines: its catalog is a `ModelList` of the `ModelEntry`
snapshots the engine process sent it. Both resolve names by the same rule (`resolve_in`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import grpc

from detserve.engines.manifest import Manifest
from detserve.server.config import ModelConfig
from detserve.server.errors import RequestError


class ModelView(Protocol):
    """A served model as the request path and ListModels/GetModelInfo see it."""

    @property
    def key(self) -> str: ...  # "name@variant"

    @property
    def name(self) -> str: ...

    @property
    def variant(self) -> str: ...

    @property
    def config(self) -> ModelConfig: ...

    @property
    def manifest(self) -> Manifest: ...

    @property
    def engine_kind(self) -> str: ...

    @property
    def is_default(self) -> bool: ...


class Catalog(Protocol):
    @property
    def models(self) -> Mapping[str, ModelView]: ...

    @property
    def default(self) -> ModelView: ...

    def resolve(self, model: str) -> ModelView: ...


M = TypeVar("M", bound=ModelView)


def resolve_in(models: Mapping[str, M], default: M, model: str) -> M:
    """"" -> `default`; "name@variant" exactly; "name" -> that name's default variant (else its
    first). NOT_FOUND, listing the served models, for anything else."""
    if not model:
        return default
    found = models.get(model)
    if found is None and "@" not in model:
        named = [m for m in models.values() if m.name == model]
        found = next((m for m in named if m.is_default), named[0] if named else None)
    if found is None:
        raise RequestError(
            grpc.StatusCode.NOT_FOUND,
            f"unknown model {model!r}; served models: {sorted(models)}",
        )
    return found


@dataclass(frozen=True)
class ModelEntry:
    """A picklable snapshot of a served model: what a front-end process needs to validate
    requests, letterbox images and describe the model, without its engines."""

    key: str
    name: str
    variant: str
    config: ModelConfig
    manifest: Manifest
    engine_kind: str
    is_default: bool

    @classmethod
    def of(cls, model: ModelView) -> ModelEntry:
        return cls(model.key, model.name, model.variant, model.config, model.manifest,
                   model.engine_kind, model.is_default)


class ModelList:
    """A `Catalog` of `ModelEntry`s (a front end's view of the engine process's registry)."""

    def __init__(self, entries: Sequence[ModelEntry]) -> None:
        if not entries:
            raise ValueError("a model list needs at least one model, got none")
        self.models: dict[str, ModelEntry] = {e.key: e for e in entries}
        self.default = next((e for e in entries if e.is_default), entries[0])

    def resolve(self, model: str) -> ModelEntry:
        return resolve_in(self.models, self.default, model)
