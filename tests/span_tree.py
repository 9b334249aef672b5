"""Span trees for tests: spans (in memory or decoded from OTLP) as indented name lines."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan


@dataclass(frozen=True)
class Node:
    """What a tree needs of one span, whichever way it was recorded."""

    trace_id: int
    span_id: int
    parent_id: int | None
    name: str
    start: int
    end: int
    kind: str = "INTERNAL"
    attributes: Mapping[str, Any] = field(default_factory=dict)


def from_sdk(spans: Iterable[ReadableSpan]) -> list[Node]:
    nodes = []
    for span in spans:
        assert span.context is not None
        nodes.append(
            Node(
                trace_id=span.context.trace_id,
                span_id=span.context.span_id,
                parent_id=span.parent.span_id if span.parent else None,
                name=span.name,
                start=span.start_time or 0,
                end=span.end_time or 0,
                kind=span.kind.name,
                attributes=dict(span.attributes or {}),
            )
        )
    return nodes


def roots(nodes: list[Node]) -> list[Node]:
    """Spans whose parent is not among ``nodes`` (the remote caller's span, or none)."""
    ids = {node.span_id for node in nodes}
    return [node for node in nodes if node.parent_id not in ids]


def children(nodes: list[Node], parent: Node) -> list[Node]:
    return sorted(
        (n for n in nodes if n.parent_id == parent.span_id), key=lambda n: (n.start, n.name)
    )


def render(nodes: list[Node], root: Node, depth: int = 0) -> list[str]:
    """``root`` and its descendants, one name a line, two spaces a level, siblings by start."""
    lines = ["  " * depth + root.name]
    for child in children(nodes, root):
        lines.extend(render(nodes, child, depth + 1))
    return lines


def find(nodes: list[Node], name: str) -> list[Node]:
    return [node for node in nodes if node.name == name]
