"""``lint``: syntax errors with file:line, and each kind of warning on a small policy."""

from __future__ import annotations

import itertools
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Set
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from app.authz import lint as lint_module
from app.authz.compiled import key_match2_pattern
from app.authz.lint import Graph, lint
from app.authz.policy import PolicyEngine
from app.authz.reference import casbin_enforcer_of
from app.authz.source import (
    HIDING,
    Issue,
    PolicySource,
    check_model,
    read_policy,
    text_lines,
)
from bench.policygen import write_policy
from tests.conftest import POLICY_DIR


def lint_lines(tmp_path: Path, *lines: str) -> list[Issue]:
    (tmp_path / "model.conf").write_text((POLICY_DIR / "model.conf").read_text())
    (tmp_path / "policy.csv").write_text("\n".join(lines) + "\n")
    return lint(read_policy(tmp_path / "model.conf", tmp_path / "policy.csv"))


def codes(issues: list[Issue]) -> list[tuple[str, str, str]]:
    return [(i.severity, i.location, i.code) for i in issues]


def test_shipped_policy_is_clean() -> None:
    assert lint(read_policy(POLICY_DIR / "model.conf", POLICY_DIR / "policy.csv")) == []


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("x, analyst, *, /v1/*, GET, allow", "unknown line type"),
        ("p, analyst, *, /v1/*, GET", "p needs 5 fields, got 4"),
        ("p, analyst, *, /v1/*, GET, allow  # note", "inline comments"),
        ("p, analyst, *, /v1/*, GET, permit", "effect 'permit'"),
        ("p, analyst, *, v1/relative, GET, allow", "must be a path pattern"),
        ("p, analyst, *, /v1/*/findings, GET, allow", "a final /*"),
        ("p, analyst, *, /v1/acme*, GET, allow", "a final /*"),
        ("p, analyst, Acme, /v1/*, GET, allow", "engagement 'Acme'"),
        ('p, analyst, *, "/v1/a,b", GET, allow', "brackets and quotes"),
        ("g, bob, analyst", "g needs 3 fields"),
        ("g3, acme-2026, archived", "g3 lines read"),
        ("g, bob, , acme-2026", "empty field"),
    ],
)
def test_syntax_errors_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    issues = lint_lines(tmp_path, "# header", "", line)
    assert len(issues) == 1
    assert issues[0].severity == "error"
    assert issues[0].location == "policy.csv:3"
    assert message in issues[0].message


@pytest.mark.parametrize(
    ("shipped", "changed"),
    [
        ('p.act == "*"', "true"),
        # Whitespace inside a literal is meaning (Casbin compares "* " with "*"): an audit
        # found these accepted as the shipped model, which the gateway kept enforcing.
        ('p.dom == "*"', 'p.dom == "* "'),
        ('p.act == "*"', 'p.act == " * "'),
    ],
)
def test_changed_model_is_an_error(tmp_path: Path, shipped: str, changed: str) -> None:
    text = (POLICY_DIR / "model.conf").read_text()
    assert shipped in text
    (tmp_path / "model.conf").write_text(text.replace(shipped, changed))
    (tmp_path / "policy.csv").write_text("")
    issues = lint(read_policy(tmp_path / "model.conf", tmp_path / "policy.csv"))
    assert codes(issues) == [("error", "model.conf:1", "unsupported_model")]


# Whitespace Casbin does not skip: a section name read as written, a name split in two,
# a no-break space in an expression. pycasbin read another model (no ``g`` defined:
# ``policy explain --casbin`` was a traceback) while the gate checked the shipped one.
@pytest.mark.parametrize(
    ("shipped", "changed"),
    [
        ("[role_definition]", "[role_definitio\tn]"),
        ("[matchers]", "[ matchers ]"),
        ("p.eft == allow", "p.e ft == allow"),
        ("r = sub, dom,", "r = sub, d om,"),
        ("p.eft == allow", "p.eft\xa0== allow"),
        # pycasbin compares the effect as a string ("unsupported effect" at load).
        ("some(where (p.eft == allow))", "some(where(p.eft == allow))"),
        # ``&&``/``||`` become words by text replacement: ``||p.act`` reads ``orp_act``.
        ('|| p.act == "*"', '||p.act == "*"'),
        ("r.act == p.act", "r.act = = p.act"),
    ],
)
def test_whitespace_casbin_reads_is_another_model(
    tmp_path: Path, shipped: str, changed: str
) -> None:
    test_changed_model_is_an_error(tmp_path, shipped, changed)


_SHIPPED_MODEL = (POLICY_DIR / "model.conf").read_text()
_MODEL_PROBES = [
    ("alice", "e1", "/v1/x", "GET"),
    ("alice", "e1", "/v1/x", "POST"),
    ("bob", "e2", "/v1/x/y", "POST"),
    ("carol", "e1", "/admin/y", "DELETE"),
]
_PROBE_POLICY = "\n".join(
    [
        "p, lead, *, /v1/*, *, allow",
        "p, lead, e2, /v1/:a/y, POST, deny",
        "g, alice, lead, e1",
        "g, bob, lead, *",
        "g2, carol, lead",
        "g3, e1, closed",
    ]
)


def _casbin_answers(model: str) -> list[bool]:
    enforcer = casbin_enforcer_of(model.encode(), _PROBE_POLICY.encode())
    return [enforcer.enforce(*probe) for probe in _MODEL_PROBES]


@settings(max_examples=100, deadline=None)
@given(
    edits=st.lists(
        st.tuples(st.integers(0, len(_SHIPPED_MODEL)), st.sampled_from([" ", "\t", "\xa0", ""])),
        min_size=1,
        max_size=4,
    )
)
@example(edits=[(_SHIPPED_MODEL.index("[role_definition]") + 5, " ")])
@example(edits=[(_SHIPPED_MODEL.index("where (p.eft == allow)") + 5, "")])
@example(edits=[(_SHIPPED_MODEL.index('|| p.act == "*"') + 2, "")])
@example(edits=[(_SHIPPED_MODEL.index('|| !g3(r.dom, "closed")') + 2, "")])
def test_a_model_the_check_accepts_is_the_shipped_one_to_casbin(
    edits: list[tuple[int, str]],
) -> None:
    """Spaces added or taken anywhere ("" takes the space or tab at that place, if one is
    there): if the model check passes the file, pycasbin decides as with the shipped one.
    (The effect is compared by pycasbin as a string; ``&&``, ``||`` and ``!`` are
    rewritten as words, so ``||p.act`` reads ``orp_act``.)"""
    text = _SHIPPED_MODEL
    for position, space in sorted(edits, reverse=True):
        if space:
            text = text[:position] + space + text[position:]
        elif text[position : position + 1] in (" ", "\t"):
            text = text[:position] + text[position + 1 :]
    if check_model(text.split("\n"), "model.conf"):
        return
    assert _casbin_answers(text) == _casbin_answers(_SHIPPED_MODEL)


def test_each_warning(tmp_path: Path) -> None:
    issues = lint_lines(
        tmp_path,
        "p, analyst, *, /v1/engagements/:e/findings, POST, allow",  # 1 shadowed by 5 via lead
        "p, analyst, *, /v1/engagements/:e/findings, GET, allow",
        "p, analyst, *, /v1/engagements/:e/findings, GET, allow",  # 3 duplicate
        "p, ghost, *, /v1/*, GET, allow",  # 4 never granted
        "p, viewer, *, /v1/*, POST, deny",
        "g, analyst, viewer, *",
        "g, alice, analyst, acme-2026",
        "g, bob, nobody, acme-2026",  # 8 unknown role
        "p, analyst, globex, /v1/*, GET, allow",  # 9 engagement never granted
        "g3, initech-2020, closed",  # 10 engagement never granted
        "g, rita, closed_writer, acme-2026",  # 11 closed_writer per engagement
        "g, viewer-x, viewer, acme-2026",
    )
    assert codes(issues) == [
        ("warning", "policy.csv:1", "shadowed_by_deny"),
        ("warning", "policy.csv:3", "duplicate"),
        ("warning", "policy.csv:4", "role_never_granted"),
        ("warning", "policy.csv:8", "unknown_role"),
        ("note", "policy.csv:9", "engagement_unreferenced"),
        ("note", "policy.csv:10", "engagement_unreferenced"),
        ("warning", "policy.csv:11", "closed_writer_not_global"),
    ]
    assert "policy.csv:5 denies the same requests" in issues[0].message
    assert str(issues[1]) == (
        "policy.csv:3: warning: duplicate of policy.csv:2: delete one of them [duplicate]"
    )


@pytest.mark.parametrize(
    ("code", "advice"),
    [
        ("shadowed_by_deny", "narrow that deny, or delete this allow"),
        ("role_never_granted", "if it is a role, grant it"),
        ("unknown_role", "add a p line for 'nobody'"),
        ("closed_writer_not_global", "write g2, rita, closed_writer instead"),
        ("engagement_unreferenced", "check the engagement id"),
        ("action_case", "write GET"),
    ],
)
def test_every_message_says_what_to_change(tmp_path: Path, code: str, advice: str) -> None:
    issues = lint_lines(
        tmp_path,
        "p, viewer, *, /v1/x, GET, allow",
        "p, viewer, *, /v1/*, GET, deny",
        "p, ghost, *, /v1/*, GET, allow",
        "g, bob, nobody, acme-2026",
        "g, rita, closed_writer, acme-2026",
        "g, alice, viewer, acme-2026",
        "p, viewer, globex, /v1/y, get, allow",
    )
    assert advice in next(i.message for i in issues if i.code == code)


def test_a_per_subject_rule_is_valid_when_the_subject_is_granted(tmp_path: Path) -> None:
    """'Block this user now' must not break CI: alice holds roles, so she is a subject."""
    issues = lint_lines(
        tmp_path,
        "p, analyst, *, /v1/engagements/:e/findings, POST, allow",
        "g, alice, analyst, acme-2026",
        "p, alice, globex-cloud, /v1/engagements/:e/findings, POST, deny",
    )
    assert [i for i in issues if i.severity != "note"] == []


def test_a_per_subject_rule_is_valid_when_a_suite_names_the_subject(tmp_path: Path) -> None:
    lines = ("p, zoe, *, /v1/engagements/:e/findings, GET, allow",)
    assert codes(lint_lines(tmp_path, *lines)) == [
        ("warning", "policy.csv:1", "role_never_granted")
    ]
    source = read_policy(tmp_path / "model.conf", tmp_path / "policy.csv")
    assert [i for i in lint(source, {"zoe"}) if i.severity != "note"] == []


def _read_bytes(tmp_path: Path, data: bytes) -> list[Issue]:
    (tmp_path / "model.conf").write_text((POLICY_DIR / "model.conf").read_text())
    (tmp_path / "policy.csv").write_bytes(data)
    return list(read_policy(tmp_path / "model.conf", tmp_path / "policy.csv").errors)


@pytest.mark.parametrize(
    "hider",
    [
        "\x0b",
        "\x0c",
        "\x1c",
        "\x1e",
        "\r",
        "\x85",
        "\u2028",
        "\u2029",
        "\u202e",
        "\u2066",
        "\u200b",
    ],
)
def test_a_grant_hidden_in_a_comment_is_an_error_on_its_line(tmp_path: Path, hider: str) -> None:
    """Found by an audit: ``splitlines`` broke a comment at a vertical tab (and U+2028, U+0085),
    so a grant a reviewer reads as a comment was enforced. Such a character is an error now."""
    text = f"# header\n# g, zed, security_admin, * (removed){hider}g, zed, security_admin, *\n"
    issues = _read_bytes(tmp_path, text.encode())
    assert [(i.location, i.code) for i in issues] == [("policy.csv:2", "hidden_character")]
    assert f"U+{ord(hider):04X}" in issues[0].message


def test_a_crlf_file_reads_as_its_lines(tmp_path: Path) -> None:
    data = b"# header\r\n\r\ng, zoe, analyst, acme-2026\r\n"
    source = read_policy(*_paths(tmp_path, data))
    assert source.errors == ()
    assert [(line.location, line.fields) for line in source.lines] == [
        ("policy.csv:3", ("zoe", "analyst", "acme-2026"))
    ]


def _paths(tmp_path: Path, data: bytes) -> tuple[Path, Path]:
    (tmp_path / "model.conf").write_text((POLICY_DIR / "model.conf").read_text())
    (tmp_path / "policy.csv").write_bytes(data)
    return tmp_path / "model.conf", tmp_path / "policy.csv"


def test_bytes_that_are_not_utf8_are_located(tmp_path: Path) -> None:
    issues = _read_bytes(tmp_path, b"# header\n# caf\xe9\ng, zoe, analyst, acme-2026\n")
    assert [(i.location, i.code) for i in issues] == [("policy.csv:2", "encoding")]
    assert "byte 0xE9 at column 6" in issues[0].message


def test_a_byte_order_mark_says_so(tmp_path: Path) -> None:
    issues = _read_bytes(tmp_path, "\ufeffg, zoe, analyst, acme-2026\n".encode())
    assert [(i.location, i.code) for i in issues] == [("policy.csv:1", "hidden_character")]
    assert "byte-order mark" in issues[0].message


def test_tabs_and_text_beyond_ascii_in_comments_are_fine(tmp_path: Path) -> None:
    data = "# Zoë — lead\t(2026)\ng,\tzoe, analyst, acme-2026\n".encode()
    assert _read_bytes(tmp_path, data) == []


@given(
    st.lists(
        st.text(
            st.characters(blacklist_categories=("Cs",), blacklist_characters="\n"), max_size=12
        ),
        max_size=8,
    )
)
def test_lines_are_split_at_newlines_only_and_numbered_as_wc_counts(lines: list[str]) -> None:
    """Over any text: the lines are the file split at "\\n" (a "\\r" before it dropped),
    or, when one holds a hiding character, nothing and an error on each such line."""
    data = "".join(f"{line}\n" for line in lines).encode()
    got, issues = text_lines(data, "f")
    bare = [line.removesuffix("\r") for line in lines]
    hiding = [n for n, line in enumerate(bare, start=1) if HIDING.search(line)]
    assert len(bare) == data.count(b"\n")
    if hiding:
        assert (got, [i.location for i in issues]) == ([], [f"f:{n}" for n in hiding])
    else:
        assert (got, issues) == (bare, [])


def test_an_inheritance_cycle_is_a_warning_on_the_link_that_closes_it(tmp_path: Path) -> None:
    issues = lint_lines(
        tmp_path,
        "p, reviewer, acme-2026, /v1/engagements/acme-2026/*, GET, allow",
        "g, alice, reviewer, acme-2026",
        "g, reviewer, auditor, acme-2026",
        "g, auditor, reviewer, acme-2026",
    )
    cycles = [i for i in issues if i.code == "inheritance_cycle"]
    assert [(i.severity, i.location) for i in cycles] == [("warning", "policy.csv:4")]
    assert "'reviewer' already inherits 'auditor' in acme-2026" in cycles[0].message


@pytest.mark.parametrize("links", [9, 10])
def test_a_role_beyond_the_hop_limit_is_a_warning_exactly_when_it_has_no_effect(
    tmp_path: Path, links: int
) -> None:
    """Lint and the decision path agree: 9 links are followed, a 10th is not."""
    chain = ["alice", *(f"r{i}" for i in range(1, links + 1))]
    lines = [f"g, {a}, {b}, acme-2026" for a, b in itertools.pairwise(chain)]
    rule = f"p, {chain[-1]}, acme-2026, /v1/engagements/acme-2026/*, GET, allow"
    issues = lint_lines(tmp_path, rule, *lines)
    too_far = [(i.location, i.code) for i in issues if i.code == "chain_too_long"]
    engine = PolicyEngine(read_policy(tmp_path / "model.conf", tmp_path / "policy.csv"))
    allowed = engine.decide("alice", "acme-2026", "/v1/engagements/acme-2026/x", "GET").allowed
    assert allowed is (links <= 9)
    assert too_far == ([] if links <= 9 else [("policy.csv:2", "chain_too_long")])


def test_a_long_chain_is_linted_in_work_linear_in_its_length(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lint walked up the whole chain once per line (``unknown_role``) and from every role
    to its end (``chain_too_long``): quadratic, 36 s for 5,000 links. Counted, not timed:
    the role lookups of every walk."""
    links = 1_000
    chain = [f"r{i}" for i in range(links + 1)]
    lines = [f"g, {a}, {b}, *" for a, b in itertools.pairwise(chain)]
    lines += [f"g, {chain[-1]}, r0, *", "g, alice, r0, acme-2026", "p, r5, *, /v1/*, GET, allow"]
    lookups = Counter[str]()
    reach, graphs = lint_module._reach_from, lint_module._graphs

    def counted_reach(starts: Set[str], neighbours: Callable[[str], Iterable[str]]) -> set[str]:
        return reach(starts, lambda name: lookups.update(["reach"]) or neighbours(name))

    def counted_graphs(source: PolicySource) -> Iterator[tuple[str, Graph, Graph]]:
        for domain, own, graph in graphs(source):
            yield domain, own, _CountingGraph(graph, lookups)

    monkeypatch.setattr(lint_module, "_reach_from", counted_reach)
    monkeypatch.setattr(lint_module, "_graphs", counted_graphs)
    issues = lint_lines(tmp_path, *lines)
    assert (f"policy.csv:{links + 1}", "inheritance_cycle") in [
        (i.location, i.code) for i in issues
    ]
    assert ("policy.csv:1", "chain_too_long") in [(i.location, i.code) for i in issues]
    assert lookups["reach"] <= 20 * links
    assert lookups["graph"] <= 20 * links


class _CountingGraph(dict[str, list[tuple[str, str]]]):
    def __init__(self, graph: Graph, lookups: Counter[str]) -> None:
        super().__init__(graph)
        self.lookups = lookups

    def get(self, key: str, default: Any = None) -> Any:
        self.lookups["graph"] += 1
        return super().get(key, default)


ROLES = ["analyst", "lead", "viewer", "alice"]
DOMAINS = ["*", "acme-2026", "globex-2026"]
OBJECTS = ["*", "/v1/*", "/v1/engagements/*", "/v1/engagements/acme-2026/findings"]
P_LINES = st.builds(
    lambda sub, dom, obj, act, eft: f"p, {sub}, {dom}, {obj}, {act}, {eft}",
    st.sampled_from(ROLES),
    st.sampled_from(DOMAINS),
    st.sampled_from(OBJECTS),
    st.sampled_from(["GET", "POST", "*"]),
    st.sampled_from(["allow", "deny"]),
)
G_LINES = st.builds(
    lambda a, b, dom: f"g, {a}, {b}, {dom}",
    st.sampled_from(ROLES),
    st.sampled_from(ROLES),
    st.sampled_from(DOMAINS),
)


@given(st.lists(st.one_of(P_LINES, G_LINES), max_size=14))
def test_shadowed_allows_are_those_the_pairwise_comparison_finds(lines: list[str]) -> None:
    """The indexed shadow check names, for each allow, the first covering deny in file
    order, as comparing every (allow, deny) pair does (what it replaced)."""
    with tempfile.TemporaryDirectory() as tmp:
        found = [i for i in lint_lines(Path(tmp), *lines) if i.code == "shadowed_by_deny"]
        source = read_policy(Path(tmp) / "model.conf", Path(tmp) / "policy.csv")
    rules = source.of_type("p")
    denies = [r for r in rules if r.fields[4] == "deny"]
    parents = lint_module._inheritance(source)
    expected = []
    for allow in (r for r in rules if r.fields[4] == "allow"):
        inherited = lint_module._ancestors(allow.fields[0], parents)
        deny = next((d for d in denies if lint_module._covers(d, allow, inherited)), None)
        if deny is not None:
            expected.append((allow.location, deny.location))
    assert sorted((i.location, i.message.split(": ")[1].split(" ")[0]) for i in found) == sorted(
        expected
    )


def test_a_global_role_inheriting_only_through_g_lines_is_a_warning(tmp_path: Path) -> None:
    """g2 holders follow g2 inheritance only: yusuf (g) got the no_write deny, xavier
    (g2) did not, and lint said nothing (an audit; pycasbin agrees with the gateway)."""
    issues = lint_lines(
        tmp_path,
        "p, no_write, *, /v1/*, POST, deny",
        "p, trainee, *, /v1/*, GET, allow",
        "g, trainee, no_write, *",
        "g2, xavier, trainee",
        "g, yusuf, trainee, acme-2026",
    )
    [warning] = [i for i in issues if i.code == "g2_does_not_inherit"]
    assert warning.location == "policy.csv:3"
    assert "add g2, trainee, no_write" in warning.message
    fixed = lint_lines(
        tmp_path,
        "p, no_write, *, /v1/*, POST, deny",
        "p, trainee, *, /v1/*, GET, allow",
        "g, trainee, no_write, *",
        "g2, trainee, no_write",
        "g2, xavier, trainee",
        "g, yusuf, trainee, acme-2026",
    )
    assert not [i for i in fixed if i.code == "g2_does_not_inherit"]


def test_a_role_whose_last_holder_left_is_never_granted(tmp_path: Path) -> None:
    """Its own inheritance line grants it to nobody: a subject of that name would get it."""
    issues = lint_lines(
        tmp_path,
        "p, analyst, *, /v1/engagements/:e/findings, GET, allow",
        "p, engagement_lead, *, /v1/engagements/:e/close, POST, allow",
        "g, engagement_lead, analyst, *",
        "g, alice, analyst, acme-2026",
    )
    assert codes(issues) == [("warning", "policy.csv:2", "role_never_granted")]
    assert "a subject named 'engagement_lead' gets them" in issues[0].message
    held = lint_lines(
        tmp_path,
        "p, analyst, *, /v1/engagements/:e/findings, GET, allow",
        "p, engagement_lead, *, /v1/engagements/:e/close, POST, allow",
        "g, engagement_lead, analyst, *",
        "g, bob, engagement_lead, acme-2026",
    )
    assert [i for i in held if i.severity != "note"] == []


def test_a_rule_whose_engagement_is_not_its_path_s_is_a_warning(tmp_path: Path) -> None:
    issues = lint_lines(
        tmp_path,
        "p, analyst, *, /v1/engagements/:e/findings, GET, allow",
        "g, alice, analyst, acme-2026",
        "g, alice, analyst, globex-cloud",
        "p, alice, globex-cloud, /v1/engagements/acme-2026/findings, GET, deny",  # 4
        "p, alice, acme-2026, /v1/engagements/acme-2026/findings, POST, deny",
        "p, alice, globex-cloud, /v1/engagements/:e/findings, PUT, deny",
        "p, alice, *, /v1/engagements/acme-2026/findings, PATCH, deny",
    )
    assert codes(issues) == [("warning", "policy.csv:4", "engagement_mismatch")]
    assert "never in 'globex-cloud'" in issues[0].message


def test_a_dot_in_a_rule_path_is_any_character(tmp_path: Path) -> None:
    issues = lint_lines(
        tmp_path,
        "p, analyst, *, /v1/engagements/:e/reports/R-1.pdf, GET, allow",
        "g, alice, analyst, acme-2026",
    )
    assert codes(issues) == [("warning", "policy.csv:1", "object_any_character")]
    assert "'/v1/engagements/:e/reports/R-1xpdf'" in issues[0].message
    engine = PolicyEngine(read_policy(tmp_path / "model.conf", tmp_path / "policy.csv"))
    widened = "/v1/engagements/acme-2026/reports/R-1xpdf"
    assert engine.explain("alice", "acme-2026", widened, "GET").allowed  # what the warning says


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ("/v1/engagements/:e/reports/draft+internal", "contains '+'"),
        ("/v1/engagements/:e/reports/R$1", "contains '$'"),
        ("/v1/engagements/:e/reports/R:1", "':' inside a segment"),
        (
            "/v1/engagements/:e/reports/draft%2binternal",
            "'/v1/engagements/:e/reports/draft%2Binternal'",
        ),
        ("/v1/engagements/:e/reports/%7Edraft", "'/v1/engagements/:e/reports/~draft'"),
        ("/v1/engagements/:e/reports/", "'/v1/engagements/:e/reports'"),
        ("/v1/engagements/:e/./reports", "'/v1/engagements/:e/reports'"),
        ("/v1/engagements/:e//reports", "'/v1/engagements/:e/reports'"),
        ("/v1/engagements/:e/%2F/reports", "a path the gateway refuses"),
    ],
)
def test_a_rule_path_that_never_matches_its_own_spelling_is_an_error(
    tmp_path: Path, obj: str, message: str
) -> None:
    issues = lint_lines(tmp_path, f"p, client_viewer, *, {obj}, GET, deny")
    assert [(i.severity, i.location) for i in issues] == [("error", "policy.csv:1")]
    assert message in issues[0].message


def test_a_warning_quotes_a_long_object_cut_short(tmp_path: Path) -> None:
    """A rule's object may be 4,096 characters; its '.' warning quoted it twice, whole."""
    obj = "/v1/a." + "b" * 4000
    issues = lint_lines(tmp_path, f"p, analyst, *, {obj}, GET, allow", "g, alice, analyst, *")
    (warning,) = [i for i in issues if i.code == "object_any_character"]
    assert warning.location == "policy.csv:1"
    assert f"... ({len(obj)} characters)" in warning.message
    assert len(warning.message) < 1000


def test_a_get_deny_that_leaves_head_allowed_is_a_warning(tmp_path: Path) -> None:
    """Red team r31: an allow of every method and a deny of GET left HEAD allowed."""
    issues = lint_lines(
        tmp_path,
        "p, analyst, *, /v1/engagements/:e/reports/*, *, allow",
        "p, analyst, *, /v1/engagements/:e/reports/secret, GET, deny",  # 2
        "g, alice, analyst, acme-2026",
    )
    assert codes(issues) == [("warning", "policy.csv:2", "head_not_denied")]
    assert "policy.csv:1 allows (* for 'analyst')" in issues[0].message
    assert "add p, analyst, *, /v1/engagements/:e/reports/secret, HEAD, deny" in issues[0].message
    engine = PolicyEngine(read_policy(tmp_path / "model.conf", tmp_path / "policy.csv"))
    path = "/v1/engagements/acme-2026/reports/secret"
    assert not engine.explain("alice", "acme-2026", path, "GET").allowed
    assert engine.explain("alice", "acme-2026", path, "HEAD").allowed  # what the warning says


def test_head_left_allowed_through_another_role_of_the_holder_is_a_warning(
    tmp_path: Path,
) -> None:
    issues = lint_lines(
        tmp_path,
        "p, restricted, acme-2026, /v1/engagements/acme-2026/findings/:id, GET, deny",  # 1
        "p, reader, *, /v1/engagements/:e/findings/*, HEAD, allow",  # 2
        "p, reader, *, /v1/engagements/:e/findings/*, GET, allow",
        "g, bob, restricted, acme-2026",
        "g, bob, reader, acme-2026",
    )
    assert codes(issues) == [("warning", "policy.csv:1", "head_not_denied")]
    assert "policy.csv:2 allows (HEAD for 'reader')" in issues[0].message


@pytest.mark.parametrize(
    "extra",
    [
        # HEAD denied too: by its own line, by a deny of every method, by a wider path
        "p, analyst, *, /v1/engagements/:e/reports/secret, HEAD, deny",
        "p, analyst, *, /v1/engagements/:e/reports/secret, *, deny",
        "p, analyst, *, /v1/engagements/:e/reports/*, HEAD, deny",
        # denied to a role the holder inherits
        "p, staff, *, *, HEAD, deny",
    ],
)
def test_a_get_deny_with_head_denied_as_well_is_clean(tmp_path: Path, extra: str) -> None:
    issues = lint_lines(
        tmp_path,
        "p, analyst, *, /v1/engagements/:e/reports/*, *, allow",
        "p, analyst, *, /v1/engagements/:e/reports/secret, GET, deny",
        extra,
        "g, analyst, staff, *",
        "g, alice, analyst, acme-2026",
    )
    assert "head_not_denied" not in [i.code for i in issues]


@pytest.mark.parametrize(
    "allow",
    [
        "p, analyst, *, /v1/engagements/:e/reports/*, GET, allow",  # no HEAD allowed at all
        "p, admin, *, /v1/engagements/:e/reports/*, *, allow",  # nobody holds both
        "p, analyst, *, /v1/engagements/:e/findings/*, *, allow",  # another path
        "p, analyst, globex, /v1/engagements/:e/reports/*, *, allow",  # another engagement
    ],
)
def test_a_get_deny_where_nothing_allows_head_is_clean(tmp_path: Path, allow: str) -> None:
    issues = lint_lines(
        tmp_path,
        allow,
        "p, analyst, acme-2026, /v1/engagements/:e/reports/secret, GET, deny",
        "g, alice, analyst, acme-2026",
        "g, root, admin, *",
    )
    assert "head_not_denied" not in [i.code for i in issues]


def test_head_not_denied_names_the_first_allow_in_file_order(tmp_path: Path) -> None:
    """Several allows meet the path: the message names the first, whatever the set order."""
    lines = [
        "p, zeta, *, /v1/engagements/:e/reports/*, *, allow",  # 1
        "p, alpha, *, /v1/engagements/:e/reports/*, HEAD, allow",
        "p, restricted, *, /v1/engagements/:e/reports/secret, GET, deny",  # 3
        "g, bob, zeta, acme-2026",
        "g, bob, alpha, acme-2026",
        "g, bob, restricted, acme-2026",
    ]
    (warning,) = [i for i in lint_lines(tmp_path, *lines) if i.code == "head_not_denied"]
    assert warning.location == "policy.csv:3"
    assert "policy.csv:1 allows (* for 'zeta')" in warning.message


SECRET = "/v1/engagements/acme-2026/reports/secret"


@pytest.mark.parametrize(
    ("lines", "groups"),
    [
        pytest.param(  # neither object matches the other's spelling, yet both meet SECRET
            [
                "p, analyst, acme-2026, /v1/engagements/acme-2026/reports/*, *, allow",
                "p, analyst, *, /v1/engagements/:e/reports/secret, GET, deny",
                "g, alice, analyst, acme-2026",
            ],
            (),
            id="per-engagement-allow-parameter-deny",
        ),
        pytest.param(
            [
                "p, analyst, acme-2026, /v1/engagements/acme-2026/*, *, allow",
                "p, analyst, *, /v1/engagements/:e/reports/:id, GET, deny",
                "g, alice, analyst, acme-2026",
            ],
            (),
            id="parameters-on-both-sides",
        ),
        pytest.param(  # the deny is the group's, the allow the subject's own
            [
                "p, reader, *, /v1/engagements/:e/reports/*, *, allow",
                "p, restricted, *, /v1/engagements/:e/reports/secret, GET, deny",
                "g, alice, reader, acme-2026",
                "g, group:contractors, restricted, *",
            ],
            ("contractors",),
            id="group-deny-subject-allow",
        ),
        pytest.param(
            [
                "p, reader, *, /v1/engagements/:e/reports/*, *, allow",
                "p, restricted, *, /v1/engagements/:e/reports/secret, GET, deny",
                "g, group:staff, reader, acme-2026",
                "g, group:contractors, restricted, *",
            ],
            ("staff", "contractors"),
            id="two-groups",
        ),
        pytest.param(
            [
                "p, reader, *, /v1/engagements/:e/reports/*, *, allow",
                "p, alice, *, /v1/engagements/:e/reports/secret, GET, deny",
                "g, group:staff, reader, *",
            ],
            ("staff",),
            id="subject-deny-group-allow",
        ),
        pytest.param(  # a deny of every method, but on one report of the denied many
            [
                "p, analyst, *, /v1/engagements/:e/reports/*, *, allow",
                "p, analyst, *, /v1/engagements/:e/*, GET, deny",
                "p, analyst, *, /v1/engagements/:e/reports/other, *, deny",
                "g, alice, analyst, acme-2026",
            ],
            (),
            id="star-deny-on-a-narrower-path",
        ),
        pytest.param(
            [
                "p, auditor, *, *, *, allow",
                "p, auditor, *, /v1/engagements/:e/reports/secret, GET, deny",
                "g2, alice, auditor",
            ],
            (),
            id="global-role",
        ),
        pytest.param(  # the HEAD deny's role is inherited in another engagement only
            [
                "p, analyst, *, /v1/engagements/:e/reports/*, *, allow",
                "p, analyst, *, /v1/engagements/:e/reports/secret, GET, deny",
                "p, staff, *, *, HEAD, deny",
                "g, analyst, staff, globex-2026",
                "g, alice, analyst, acme-2026",
            ],
            (),
            id="head-deny-inherited-in-another-engagement",
        ),
        pytest.param(  # g2 inheritance: only g2 holders of analyst get staff
            [
                "p, analyst, *, /v1/engagements/:e/reports/*, *, allow",
                "p, analyst, *, /v1/engagements/:e/reports/secret, GET, deny",
                "p, staff, *, *, HEAD, deny",
                "g2, analyst, staff",
                "g, alice, analyst, acme-2026",
            ],
            (),
            id="head-deny-inherited-with-g2-by-a-g-holder",
        ),
        pytest.param(  # g inheritance: a g2 holder of analyst does not get staff
            [
                "p, analyst, *, /v1/engagements/:e/reports/*, *, allow",
                "p, analyst, *, /v1/engagements/:e/reports/secret, GET, deny",
                "p, staff, *, *, HEAD, deny",
                "g, analyst, staff, *",
                "g2, alice, analyst",
            ],
            (),
            id="head-deny-inherited-with-g-by-a-g2-holder",
        ),
    ],
)
def test_head_left_allowed_is_a_warning_whatever_the_spelling(
    tmp_path: Path, lines: list[str], groups: tuple[str, ...]
) -> None:
    """Each policy lets alice HEAD what a deny keeps her from GETting (the engine says so)."""
    issues = lint_lines(tmp_path, *lines)
    engine = PolicyEngine(read_policy(tmp_path / "model.conf", tmp_path / "policy.csv"))
    assert not engine.explain("alice", "acme-2026", SECRET, "GET", groups).allowed
    assert engine.explain("alice", "acme-2026", SECRET, "HEAD", groups).allowed
    assert "head_not_denied" in [i.code for i in issues]


@pytest.mark.parametrize(
    "head_deny",
    [
        "p, analyst, *, /v1/engagements/:e/reports/:id, HEAD, deny",
        "p, analyst, acme-2026, /v1/engagements/:e/*, HEAD, deny",
    ],
)
def test_a_head_deny_spelt_with_parameters_covers_the_get_deny(
    tmp_path: Path, head_deny: str
) -> None:
    issues = lint_lines(
        tmp_path,
        "p, analyst, *, /v1/engagements/:e/reports/*, *, allow",
        "p, analyst, acme-2026, /v1/engagements/acme-2026/reports/secret, GET, deny",
        head_deny,
        "g, alice, analyst, acme-2026",
    )
    engine = PolicyEngine(read_policy(tmp_path / "model.conf", tmp_path / "policy.csv"))
    assert not engine.explain("alice", "acme-2026", SECRET, "HEAD").allowed
    assert "head_not_denied" not in [i.code for i in issues]


def test_the_generated_bench_policy_has_no_head_warning(tmp_path: Path) -> None:
    """Its GET denies are client viewers' on findings; only /admin/* allows HEAD."""
    policy = write_policy(tmp_path / "policies", 2_000)
    issues = lint(read_policy(policy / "model.conf", policy / "policy.csv"))
    assert "head_not_denied" not in [i.code for i in issues]


_SEGMENT = st.sampled_from(["a", "b", ":x", ":y"])
_PATTERN = st.builds(
    lambda segments, below: "/" + "/".join(segments) + ("/*" if below else ""),
    st.lists(_SEGMENT, min_size=1, max_size=4),
    st.booleans(),
) | st.just("*")
_PATH = st.lists(st.sampled_from(["a", "b"]), min_size=1, max_size=5).map(
    lambda segments: "/" + "/".join(segments)
)


@settings(max_examples=300)
@example(one="/a/*", other="/:x/b", path="/a/b")  # neither spelling matches the other
@given(one=_PATTERN, other=_PATTERN, path=_PATH)
def test_head_not_denied_path_checks_agree_with_key_match2(one: str, other: str, path: str) -> None:
    """``_meet`` never misses a path both match; ``_holds`` never claims one it misses."""
    matches_one = key_match2_pattern(one)(path)
    matches_other = key_match2_pattern(other)(path)
    if matches_one and matches_other:
        assert lint_module._meet(one, other)
    if matches_other and not matches_one:
        assert not lint_module._holds(one, other)
