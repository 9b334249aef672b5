"""``quick_init``: a frozen, slotted dataclass built at a third of the cost.

A ``@dataclass(frozen=True)`` sets each field in ``__init__`` with
``object.__setattr__(self, name, value)`` (its own ``__setattr__`` refuses):
about 0.2 µs a field on the bench machine, so a twelve-field ``Decision`` costs
about 3 µs to build, and each request builds about ten such values (the parsed
signature, the identity, the target, the decision, the admission...). With
``slots=True`` every field is a slot, whose descriptor can set it directly:
``quick_init`` replaces the generated ``__init__`` by one that does, with the same
parameters (names, order, defaults, keyword-only ones). Everything else is the
dataclass's own: equality, hash, repr, ``replace``, and assignment still raises
``FrozenInstanceError``.

Only for what the generated ``__init__`` does nothing more with: no
``__post_init__`` (so no ``InitVar``); a ``default_factory`` is called, and a
field outside ``__init__`` set to its default, as the dataclass does. Anything
else is refused when the class is defined. Weighed against
dropping ``frozen=True`` on the hot values (as fast, but the values the gate
hands from stage to stage could then be changed by any stage) and against
``NamedTuple`` (as fast, but a tuple: equal to any tuple of the same items,
iterable and indexable, which the code would then have to guard against).
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, TypeVar

T = TypeVar("T")

# The default of a field with a default_factory (call it): the dataclass's own
# sentinel, so both __init__'s signatures show "<factory>".
_FACTORY: object = getattr(dataclasses, "_HAS_DEFAULT_FACTORY", object())

# Every class given a quick __init__, with the dataclass's own (tests compare them).
GENERATED_INITS: dict[type[Any], Any] = {}


def quick_init(cls: type[T]) -> type[T]:
    """Give ``cls`` (a frozen, slotted dataclass) an ``__init__`` that sets its slots."""
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__}: quick_init takes a frozen, slotted dataclass")
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__}: quick_init does not run __post_init__")
    namespace: dict[str, Any] = {"_FACTORY": _FACTORY}
    positional: list[str] = []
    keyword: list[str] = []
    body: list[str] = []
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        name = field.name
        namespace[f"_set_{name}"] = cls.__dict__[name].__set__
        if not field.init:  # set to its default, as the dataclass does (or left unset)
            if field.default is not dataclasses.MISSING:
                namespace[f"_default_{name}"] = field.default
                body.append(f"    _set_{name}(self, _default_{name})")
            elif field.default_factory is not dataclasses.MISSING:
                namespace[f"_factory_{name}"] = field.default_factory
                body.append(f"    _set_{name}(self, _factory_{name}())")
            continue
        param = name
        if field.default is not dataclasses.MISSING:
            namespace[f"_default_{name}"] = field.default
            param = f"{name}=_default_{name}"
        elif field.default_factory is not dataclasses.MISSING:
            # As the dataclass does: a sentinel default, replaced by a fresh value.
            namespace[f"_factory_{name}"] = field.default_factory
            param = f"{name}=_FACTORY"
            body.append(f"    if {name} is _FACTORY: {name} = _factory_{name}()")
        (keyword if field.kw_only else positional).append(param)
        body.append(f"    _set_{name}(self, {name})")
    signature = ", ".join(["self", *positional, *(["*", *keyword] if keyword else [])])
    # As dataclasses does: a factory whose closure holds the setters and defaults, run
    # with the class's module as globals, so the annotations (strings under
    # ``from __future__ import annotations``) resolve where the class's own do.
    inner = "\n".join(f"    {line}" for line in body) or "        pass"
    source = (
        f"def __make_init__({', '.join(namespace)}):\n"
        f"  def __init__({signature}):\n{inner}\n"
        "  return __init__\n"
    )
    made: dict[str, Any] = {}
    module_globals = sys.modules[cls.__module__].__dict__
    exec(source, module_globals, made)  # noqa: S102  # built from the class's own field names
    init = made["__make_init__"](**namespace)
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__annotations__ = dict(cls.__init__.__annotations__)
    GENERATED_INITS[cls] = cls.__init__
    cls.__init__ = init  # type: ignore[method-assign]
    return cls
