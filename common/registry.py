"""One registry for everything built by name (timm's `register` / `create`): models, losses, unlearning methods,
encoders, inverters, later quantizers and scorers.

    @register("m4.model", "m4")
    def m4(feat_input: int = 2048, ...) -> nn.Module: ...

    model = create("m4.model", "m4", feat_input=1024)

A kind is a dotted name, by convention `<method>.<what>`; a schema field with `registry="<kind>"` accepts only the
names registered under it, and the error lists them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from common.errors import UserError

T = TypeVar("T")

_ENTRIES: dict[str, dict[str, Any]] = {}


def register(kind: str, name: str) -> Callable[[T], T]:
    """Decorator: file `obj` under (kind, name). A second registration of the same name is a bug, not an override."""

    def add(obj: T) -> T:
        entries = _ENTRIES.setdefault(kind, {})
        if name in entries and entries[name] is not obj:
            raise ValueError(f"{kind} '{name}' is registered twice")
        entries[name] = obj
        return obj

    return add


def names(kind: str) -> list[str]:
    """The registered names of a kind, in registration order."""
    return list(_ENTRIES.get(kind, {}))


def get(kind: str, name: str) -> Any:
    """The object registered as (kind, name); an unknown name is a UserError listing the valid ones."""
    entries = _ENTRIES.get(kind, {})
    if name not in entries:
        raise UserError(f"unknown {kind} '{name}'; valid: {', '.join(entries) or '(none registered)'}")
    return entries[name]


def create(kind: str, name: str, **kwargs: Any) -> Any:
    """Call the factory registered as (kind, name) with kwargs."""
    return get(kind, name)(**kwargs)
