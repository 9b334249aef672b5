"""Policy suite files: ``<policy dir>/tests/*.yaml``, read into cases with their ``file:line``.

A file is a suite (``suite`` and ``cases``), and may declare ``fixtures``: named
subjects with their groups, visible to every case in the directory (a file may
hold fixtures only). A case names its caller with ``subject`` (+ ``groups``) or
``as: <fixture>``; its engagement is the path's (an explicit one that disagrees
is an error); its method is validated (``get`` is an error, not a silent deny);
it may assert the ``reason`` and the ``matched_rule`` besides ``expect``, and
ask to be decided as if the engagement state held the engagement closed
(``engagement_state: closed``; not on a gateway-wide path, which no close
reaches). Every problem is an error with ``file:line``: ``gateway policy lint``
lists them all, and a reload refuses the directory.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from app.authz.fields import (
    Action,
    DecisionPath,
    EngagementOrGlobal,
    FieldError,
    check_closable,
    resolve_engagement,
)
from app.authz.source import (
    HIDING,
    FileRead,
    Issue,
    clip,
    listed,
    quote,
    read_file,
    text_lines,
)
from app.domain.identity import GROUP_PATTERN, SUBJECT_PATTERN

TESTS_DIR = "tests"
FIXTURE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"

Subject = Annotated[str, Field(pattern=SUBJECT_PATTERN.pattern)]
Group = Annotated[str, Field(pattern=GROUP_PATTERN.pattern)]
Reason = Literal[
    "allowed_by_rule",
    "denied_by_rule",
    "no_matching_allow",
    "closed_engagement_read_only",
    "principal_is_role",
]


# The most suite problems one message lists (a reload's, `policy test`'s); lint lists all.
LISTED_ISSUES = 20


class SuiteError(ValueError):
    """Suite files that cannot be read or do not validate; ``issues`` has each problem."""

    def __init__(self, issues: list[Issue]) -> None:
        super().__init__(listed(issues, LISTED_ISSUES, "\n"))
        self.issues = issues


# What a suite's text may not hold once YAML has read it: a line break, or a character that
# hides or reorders text (``HIDING``). The file shows none (its escapes are plain text), but
# "\e[8m" in a case name is an escape sequence where ``policy test`` prints it: the terminal
# hid everything after, the "1 failed" summary too.
_UNSHOWABLE = re.compile(f"\n|{HIDING.pattern}")


def _one_line(value: str) -> str:
    found = _UNSHOWABLE.search(value)
    if found is not None:
        raise PydanticCustomError(
            "hidden_character",
            "character U+{code} is not allowed: a line break or an escape sequence that hides "
            "or reorders printed text; write the value with visible characters",
            {"code": f"{ord(found.group()):04X}"},
        )
    return value


def shown(text: str) -> str:
    """``text`` with each ``_UNSHOWABLE`` character as its ``\\uXXXX`` escape."""
    return _UNSHOWABLE.sub(lambda char: f"\\u{ord(char.group()):04x}", text)


Text = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_one_line)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Fixture(_Strict):
    """A caller reused by cases: ``as: <name>``."""

    subject: Subject
    groups: tuple[Group, ...] = ()


class CaseIn(_Strict):
    """One expected decision, as written."""

    name: Text
    as_: Annotated[str | None, Field(alias="as", pattern=FIXTURE_NAME)] = None
    subject: Subject | None = None
    groups: tuple[Group, ...] | None = None
    engagement: EngagementOrGlobal | None = None
    engagement_state: Literal["closed"] | None = None
    method: Action
    path: DecisionPath
    expect: Literal["allow", "deny"]
    reason: Reason | None = None
    matched_rule: Annotated[str, AfterValidator(_one_line)] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.as_ is None) == (self.subject is None):
            raise PydanticCustomError("caller", "give either subject (and groups) or as: <fixture>")
        if self.as_ is not None and self.groups is not None:
            raise PydanticCustomError("caller", "groups come from the fixture named by as:")
        try:
            engagement = resolve_engagement(self.path, self.engagement)
        except FieldError as exc:
            raise PydanticCustomError("engagement_mismatch", str(exc)) from None
        try:
            if self.engagement_state == "closed":
                check_closable(engagement, "engagement_state")
        except FieldError as exc:
            raise PydanticCustomError("engagement_state", str(exc)) from None
        if self.matched_rule is not None:
            rule_fields(self.matched_rule)
        return self


def rule_fields(text: str) -> tuple[str, ...]:
    """``analyst, *, /v1/x, GET, allow`` as its five fields; ``none`` for no rule."""
    if text.strip() == "none":
        return ()
    fields = tuple(part.strip() for part in text.split(","))
    if len(fields) != 5 or not all(fields):
        raise PydanticCustomError(
            "matched_rule", "matched_rule is 'role, engagement, object, action, effect' or 'none'"
        )
    return fields


class SuiteFile(_Strict):
    suite: Text | None = None
    fixtures: dict[Annotated[str, Field(pattern=FIXTURE_NAME)], Fixture] = Field(
        default_factory=dict
    )
    cases: list[CaseIn] = Field(default_factory=list)

    @model_validator(mode="after")
    def _suite_or_fixtures(self) -> Self:
        if (self.suite is None) != (not self.cases):
            raise PydanticCustomError("suite", "a suite needs both suite: and at least one case")
        if self.suite is None and not self.fixtures:
            raise PydanticCustomError("suite", "a file holds a suite, fixtures, or both")
        return self


@dataclass(frozen=True, slots=True)
class PolicyCase:
    """A case ready to decide: caller resolved, engagement taken from the path."""

    file: str
    line: int
    suite: str
    name: str
    subject: str
    groups: tuple[str, ...]
    engagement: str
    method: str
    path: str
    expect: str
    reason: str | None
    matched_rule: tuple[str, ...] | None
    closed: bool

    @property
    def location(self) -> str:
        return f"{self.file}:{self.line}"


class _RepeatedKey(yaml.YAMLError):
    def __init__(self, key: object, line: int) -> None:
        shown = quote(key) if isinstance(key, str) else clip(repr(key))
        super().__init__(f"repeated key {shown}")
        self.line = line


class _Located(yaml.YAMLError):
    """A problem of the document at ``line``: the message says what."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


class _UniqueKeyLoader(yaml.SafeLoader):
    """``SafeLoader`` that refuses a mapping with a key twice: PyYAML keeps the last
    value, so a second ``cases:`` silently dropped every case of the first.

    A plain value that YAML reads as a number or a date it cannot hold (an integer of
    more than 4,300 digits, ``2001-13-45``) raised ``ValueError`` from PyYAML, which
    crashed ``policy lint`` and ``policy test`` and refused a reload without the file;
    it is an error at its line here.
    """

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as exc:
            kind = str(node.tag).rpartition(":")[2]
            reason = clip(str(exc).partition(";")[0])
            raise _Located(
                node.start_mark.line + 1,
                f"cannot read: {quote(str(node.value))} is not a valid {kind} ({reason}): "
                "quote it to make it text",
            ) from None

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str | int | float | bool) or key is None:
                if key in seen:
                    raise _RepeatedKey(key, key_node.start_mark.line + 1)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


# Aliases may add at most this many nodes to a suite file's document, beyond the nodes
# written in it: ten levels of ten aliases (a "billion laughs") is 10**10 nodes, and
# reading it grew the gateway by gigabytes while its reload held every later one.
MAX_ALIAS_NODES = 100_000


class _AliasBomb(_Located):
    pass


def _check_aliases(root: yaml.Node | None) -> None:
    """``_AliasBomb`` when the document's aliases expand it past ``MAX_ALIAS_NODES``.

    The composed document holds each aliased node once; its expanded size is counted
    per distinct node (memoised), so the check is linear in the text, and a node that
    contains itself (``&a [*a]``) is refused rather than followed.
    """
    if root is None:
        return
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    written = 0

    def size(node: yaml.Node) -> int:
        nonlocal written
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise _AliasBomb(node.start_mark.line + 1, "an alias refers to a node containing it")
        written += 1
        total = 1
        if isinstance(node, yaml.SequenceNode | yaml.MappingNode):
            open_nodes.add(key)
            children = node.value if isinstance(node, yaml.SequenceNode) else _pairs(node)
            total += sum(size(child) for child in children)
            open_nodes.discard(key)
        sizes[key] = total
        return total

    expanded = size(root)
    if expanded > written + MAX_ALIAS_NODES:
        raise _AliasBomb(
            1,
            f"aliases expand the document to {expanded} nodes (at most {MAX_ALIAS_NODES} "
            "more than it writes out): refused",
        )


def _compose_and_load(text: str) -> tuple[dict[tuple[Any, ...], int], Any]:
    """The document's line map and its data, from one parse (``yaml.load``'s steps).

    The composed nodes are checked for alias bombs before anything walks them (the
    line map) or builds the data from them.
    """
    loader = _UniqueKeyLoader(text)  # a SafeLoader
    try:
        root = loader.get_single_node()
        _check_aliases(root)
        return _line_map(root), None if root is None else loader.construct_document(root)
    finally:
        loader.dispose()


def _pairs(node: yaml.MappingNode) -> Iterator[yaml.Node]:
    for key, value in node.value:
        yield key
        yield value


def suite_paths(policy_dir: Path) -> list[Path]:
    """``tests/*.yaml`` as a shell reads it: a name starting with ``.`` is no suite.

    Editors leave such files beside the one being edited (Emacs's lock
    ``.#findings.yaml``, a dangling symlink; macOS's ``._findings.yaml``, binary);
    read as suites they refused every reload, a revocation saved meanwhile too.
    """
    found = (policy_dir / TESTS_DIR).glob("*.y*ml")
    return sorted(path for path in found if not path.name.startswith("."))


def read_suites(policy_dir: Path) -> tuple[list[PolicyCase], list[Issue]]:
    """Every case in the directory, and every problem found (each with ``file:line``)."""
    return parse_suites([read_file(path) for path in suite_paths(policy_dir)])


def parse_suites(files: Sequence[FileRead]) -> tuple[list[PolicyCase], list[Issue]]:
    """Every case in the suite files as read, and every problem (each with ``file:line``)."""
    parsed: list[tuple[str, SuiteFile, dict[tuple[Any, ...], int]]] = []
    issues: list[Issue] = []
    for read in files:
        name = f"{TESTS_DIR}/{read.path.name}"
        if read.data is None:  # a FIFO or a device is never opened for reading
            message = "not a regular file" if read.absent else f"cannot read: {read.problem}"
            issues.append(Issue("error", f"{name}:1", "suite", message))
            continue
        data = read.data
        unreadable = text_lines(data, name)[1]  # not UTF-8, or a character that hides text
        if unreadable:
            issues += unreadable
            continue
        text = data.decode("utf-8")
        try:
            lines, document = _compose_and_load(text)
            parsed.append((name, SuiteFile.model_validate(document), lines))
        except _AliasBomb as exc:
            issues.append(Issue("error", f"{name}:{exc.line}", "suite", f"cannot read: {exc}"))
        except _Located as exc:
            issues.append(Issue("error", f"{name}:{exc.line}", "suite", str(exc)))
        except _RepeatedKey as exc:
            issues.append(Issue("error", f"{name}:{exc.line}", "suite", str(exc)))
        except yaml.YAMLError as exc:  # PyYAML quotes a tag or an anchor name whole
            # At the line PyYAML found the problem on (it was always line 1 here).
            mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
            line = mark.line + 1 if mark is not None else 1
            message = f"cannot read: {clip(str(exc), 500)}"
            issues.append(Issue("error", f"{name}:{line}", "suite", message))
        except RecursionError:
            message = "cannot read: nested too deeply"
            issues.append(Issue("error", f"{name}:1", "suite", message))
        except ValidationError as exc:
            issues += [_issue(name, lines, error) for error in exc.errors()]
    fixtures, fixture_issues = _fixtures(parsed)
    cases, case_issues = _cases(parsed, fixtures)
    return cases, [*issues, *fixture_issues, *case_issues]


def load_suites(policy_dir: Path) -> list[PolicyCase]:
    """Every case, or ``SuiteError`` listing every problem."""
    return checked(*read_suites(policy_dir))


def checked(cases: list[PolicyCase], issues: list[Issue]) -> list[PolicyCase]:
    """``cases``, or ``SuiteError`` listing every problem in ``issues``."""
    if issues:
        raise SuiteError(issues)
    return cases


def _fixtures(
    parsed: list[tuple[str, SuiteFile, dict[tuple[Any, ...], int]]],
) -> tuple[dict[str, Fixture], list[Issue]]:
    found: dict[str, tuple[str, Fixture]] = {}
    issues = []
    for name, suite, lines in parsed:
        for key, fixture in suite.fixtures.items():
            if key in found:
                where = f"{name}:{lines.get(('fixtures', key), 1)}"
                message = f"fixture {key!r} is already defined in {found[key][0]}: rename one"
                issues.append(Issue("error", where, "duplicate_fixture", message))
            else:
                found[key] = (name, fixture)
    return {key: fixture for key, (_, fixture) in found.items()}, issues


def _cases(
    parsed: list[tuple[str, SuiteFile, dict[tuple[Any, ...], int]]], fixtures: dict[str, Fixture]
) -> tuple[list[PolicyCase], list[Issue]]:
    cases, issues = [], []
    for name, suite, lines in parsed:
        for index, case in enumerate(suite.cases):
            line = lines.get(("cases", index), 1)
            fixture = fixtures.get(case.as_) if case.as_ is not None else None
            if case.as_ is not None and fixture is None:
                message = f"case {case.name!r}: no fixture {case.as_!r}: define it under fixtures:"
                issues.append(Issue("error", f"{name}:{line}", "unknown_fixture", message))
                continue
            subject = fixture.subject if fixture else case.subject or ""
            groups = fixture.groups if fixture else case.groups or ()
            matched = rule_fields(case.matched_rule) if case.matched_rule is not None else None
            cases.append(
                PolicyCase(name, line, suite.suite or "", case.name, subject, groups,
                         resolve_engagement(case.path, case.engagement), case.method, case.path,
                         case.expect, case.reason, matched, case.engagement_state == "closed")
            )  # fmt: skip
    return cases, issues


def _issue(name: str, lines: dict[tuple[Any, ...], int], error: Any) -> Issue:
    loc = tuple(error["loc"])
    line = next((lines[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in lines), 1)
    where = clip(shown(".".join(map(str, loc))))  # a key the model forbids is part of it
    message = f"{where}: {clip(str(error['msg']))}" if where else clip(str(error["msg"]))
    code = error["type"] if error["type"] in _OWN_CODES else "suite"
    return Issue("error", f"{name}:{line}", code, message)


_OWN_CODES = {
    "engagement_mismatch",
    "engagement_state",
    "invalid_action",
    "caller",
    "hidden_character",
    "matched_rule",
    "suite",
}


def _line_map(root: yaml.Node | None) -> dict[tuple[Any, ...], int]:
    """1-based line of every mapping key and sequence item, by its path in the document."""
    lines: dict[tuple[Any, ...], int] = {}
    for path, node in _walk(root, ()):
        lines.setdefault(path, node.start_mark.line + 1)
    return lines


def _walk(node: Any, path: tuple[Any, ...]) -> Iterator[tuple[tuple[Any, ...], Any]]:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode):
                continue  # a list or mapping as a key: loading refuses it (unhashable)
            yield (*path, key.value), key
            yield from _walk(value, (*path, key.value))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield (*path, index), item
            yield from _walk(item, (*path, index))
