"""``quick_init``: the same frozen values as the dataclass's own ``__init__``, faster."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

import app.main  # noqa: F401  # imports every module whose values use quick_init
from app.core.frozen import GENERATED_INITS, quick_init


@quick_init
@dataclass(frozen=True, slots=True)
class Quick:
    a: int
    b: str
    c: int = 7
    d: tuple[str, ...] = ()
    e: str | None = field(default=None, kw_only=True)


@dataclass(frozen=True, slots=True)
class Plain:
    a: int
    b: str
    c: int = 7
    d: tuple[str, ...] = ()
    e: str | None = field(default=None, kw_only=True)


def _fields(value: object) -> dict[str, object]:
    return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}  # type: ignore[arg-type]


@given(
    st.integers(),
    st.text(max_size=5),
    st.one_of(st.none(), st.integers()),
    st.one_of(st.none(), st.tuples(st.text(max_size=3))),
    st.one_of(st.none(), st.text(max_size=3)),
)
def test_quick_init_builds_what_the_dataclass_builds(
    a: int, b: str, c: int | None, d: tuple[str, ...] | None, e: str | None
) -> None:
    kwargs: dict[str, object] = {}
    if c is not None:
        kwargs["c"] = c
    if d is not None:
        kwargs["d"] = d
    if e is not None:
        kwargs["e"] = e
    quick, plain = Quick(a, b, **kwargs), Plain(a, b, **kwargs)  # type: ignore[arg-type]
    assert _fields(quick) == _fields(plain)
    assert quick == Quick(a, b, **kwargs)  # type: ignore[arg-type]
    assert hash(quick) == hash(Quick(a, b, **kwargs))  # type: ignore[arg-type]
    assert repr(quick) == repr(plain).replace("Plain(", "Quick(", 1)
    assert dataclasses.replace(quick, a=a + 1).a == a + 1


def test_quick_values_stay_frozen() -> None:
    value = Quick(1, "x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        value.a = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        Quick(1, "x", 7, (), "kw")  # type: ignore[misc]  # e is keyword-only
    with pytest.raises(TypeError):
        Quick(1)  # type: ignore[call-arg]


def test_every_quick_init_takes_the_parameters_of_the_dataclasss_own() -> None:
    """Names, order, kinds, defaults and annotations: callers cannot tell them apart."""
    assert len(GENERATED_INITS) >= 10  # the hot values of the pipeline
    for cls, generated in GENERATED_INITS.items():
        assert inspect.signature(cls.__init__) == inspect.signature(generated), cls
        # The annotations resolve in the class's module, as the dataclass's own do.
        assert typing.get_type_hints(cls.__init__) == typing.get_type_hints(generated), cls


@dataclass(slots=True)
class _Mutable:
    a: int


@dataclass(frozen=True)
class _Unslotted:
    a: int


@dataclass(frozen=True, slots=True)
class _PostInit:
    a: int

    def __post_init__(self) -> None:
        pass


@pytest.mark.parametrize("cls", [_Mutable, _Unslotted, _PostInit])
def test_quick_init_refuses_what_it_would_not_build_the_same(cls: type[object]) -> None:
    with pytest.raises(TypeError):
        quick_init(cls)


@quick_init
@dataclass(frozen=True, slots=True)
class _WithFactory:
    a: int
    items: list[int] = field(default_factory=list)
    later: int = field(default=5, init=False)
    made: list[int] = field(default_factory=list, init=False)


def test_a_default_factory_gives_each_value_its_own() -> None:
    first, second = _WithFactory(1), _WithFactory(2)
    assert first.items == []
    assert second.items == []
    assert first.items is not second.items
    assert _WithFactory(3, [4]).items == [4]
    assert first.later == 5
    assert first.made == []
    assert first.made is not second.made
