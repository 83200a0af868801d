"""One registry for everything built by name (timm's `register` / `create`): models, losses, unlearning methods,
encoders, inverters, later quantizers and scorers.

    @register("m4.model", "m4")
    def m4(feat_input: int = 2048, ...) -> nn.Module: ...

    model = create("m4.model", "m4", feat_input=1024)

A kind is a dotted name, by convention `<method>.<what>`. A kind that a setting names (a schema field with
`registry="<kind>"`) is declared with its names in the method's config.py, which the CLI imports to compose:

    LOSSES = declare("meow.loss", ("ga", "gd", ...), module="methods.meow.losses")

so the setting is checked at compose time, listing the valid names, without importing the module that registers them
(and torch with it). A declared kind is closed: registering a name it does not declare is an error, and
tests/common/test_light_cli.py imports every declared module and checks that it registered each declared name.
`get`/`create` import the declared module when needed. A kind no setting names (m4.encoder) needs no declaration.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from common.errors import UserError

T = TypeVar("T")

_ENTRIES: dict[str, dict[str, Any]] = {}
_DECLARED: dict[str, tuple[tuple[str, ...], str]] = {}  # kind -> (its names, the module that registers them)


def declare(kind: str, names: Sequence[str], module: str) -> str:
    """The names of a closed kind, registered by `module` (imported only when one is built); returns `kind`."""
    declaration = (tuple(names), module)
    if len(set(declaration[0])) != len(declaration[0]):
        raise ValueError(f"{kind}: a name is declared twice in {', '.join(names)}")
    if _DECLARED.setdefault(kind, declaration) != declaration:
        raise ValueError(f"{kind} is declared twice, with different names or modules")
    undeclared = [n for n in _ENTRIES.get(kind, {}) if n not in declaration[0]]
    if undeclared:
        raise ValueError(f"{kind} '{undeclared[0]}' is registered but not declared (valid: {', '.join(names)})")
    return kind


def register(kind: str, name: str) -> Callable[[T], T]:
    """Decorator: file `obj` under (kind, name). A second registration of the same name is a bug, not an override;
    so is a name that the kind's declaration lacks."""
    if kind in _DECLARED and name not in _DECLARED[kind][0]:
        raise ValueError(f"{kind} '{name}' is not declared; add it to the names declared for {kind}")

    def add(obj: T) -> T:
        entries = _ENTRIES.setdefault(kind, {})
        if name in entries and entries[name] is not obj:
            raise ValueError(f"{kind} '{name}' is registered twice")
        entries[name] = obj
        return obj

    return add


def declared(kind: str) -> tuple[str, ...]:
    """The declared names of a kind, for a setting's check; a kind without a declaration is a bug in the schema."""
    if kind not in _DECLARED:
        raise ValueError(f"registry kind '{kind}' is named by a setting but not declared (common.registry.declare)")
    return _DECLARED[kind][0]


def names(kind: str) -> list[str]:
    """The names of a kind: the declared ones (in declaration order), else the registered ones (registration order)."""
    return list(_DECLARED[kind][0]) if kind in _DECLARED else list(_ENTRIES.get(kind, {}))


def unregistered(kind: str) -> list[str]:
    """The declared names of a kind that its module, once imported, did not register (a test keeps this empty)."""
    importlib.import_module(_DECLARED[kind][1])
    return [n for n in _DECLARED[kind][0] if n not in _ENTRIES.get(kind, {})]


def kinds() -> list[str]:
    """Every declared kind (of the config modules imported so far)."""
    return list(_DECLARED)


def get(kind: str, name: str) -> Any:
    """The object registered as (kind, name); an unknown name is a UserError listing the valid ones."""
    if kind in _DECLARED and name in _DECLARED[kind][0] and name not in _ENTRIES.get(kind, {}):
        importlib.import_module(_DECLARED[kind][1])
    entries = _ENTRIES.get(kind, {})
    if name not in entries:
        if name in names(kind):
            raise ValueError(f"{kind} '{name}' is declared but {_DECLARED[kind][1]} does not register it")
        raise UserError(f"unknown {kind} '{name}'; valid: {', '.join(names(kind)) or '(none registered)'}")
    return entries[name]


def create(kind: str, name: str, **kwargs: Any) -> Any:
    """Call the factory registered as (kind, name) with kwargs."""
    return get(kind, name)(**kwargs)
