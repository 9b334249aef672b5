"""The log context: one variable, copy on bind, the same visibility as one variable per key."""

from __future__ import annotations

import asyncio

import pytest

from app.core import logcontext


@pytest.fixture(autouse=True)
def _fresh() -> None:
    logcontext.clear()


def test_bind_adds_and_replaces_keys_without_changing_an_earlier_view() -> None:
    logcontext.bind(corr_id="c1", subject="alice")
    before = logcontext.current()
    logcontext.bind(subject="bob", engagement="acme-2026")
    assert dict(logcontext.current()) == {
        "corr_id": "c1",
        "subject": "bob",
        "engagement": "acme-2026",
    }
    assert dict(before) == {"corr_id": "c1", "subject": "alice"}


def test_clear_forgets_every_key() -> None:
    logcontext.bind(corr_id="c1")
    logcontext.clear()
    assert dict(logcontext.current()) == {}


def test_a_line_keeps_its_own_value_for_a_key_the_context_also_has() -> None:
    logcontext.bind(corr_id="c1", stage="edge")
    line = logcontext.merge(None, "info", {"event": "decision", "stage": "authz"})
    assert line == {"event": "decision", "stage": "authz", "corr_id": "c1"}


@pytest.mark.anyio
async def test_a_task_sees_the_context_it_started_with_and_keeps_its_binds_to_itself() -> None:
    logcontext.bind(corr_id="parent")
    seen: dict[str, object] = {}

    async def child() -> None:
        seen.update(logcontext.current())
        logcontext.bind(corr_id="child", subject="s")
        seen["after"] = dict(logcontext.current())

    await asyncio.create_task(child())
    assert seen["corr_id"] == "parent"
    assert seen["after"] == {"corr_id": "child", "subject": "s"}
    assert dict(logcontext.current()) == {"corr_id": "parent"}


@pytest.mark.anyio
async def test_concurrent_requests_do_not_see_each_others_keys() -> None:
    async def request(n: int) -> dict[str, object]:
        logcontext.clear()
        logcontext.bind(corr_id=f"c{n}")
        await asyncio.sleep(0)
        logcontext.bind(subject=f"s{n}")
        await asyncio.sleep(0)
        return dict(logcontext.current())

    results = await asyncio.gather(*(request(n) for n in range(20)))
    assert results == [{"corr_id": f"c{n}", "subject": f"s{n}"} for n in range(20)]
