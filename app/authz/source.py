"""Policy files as the gateway reads them: CSV lines with file:line, the model check.

The reader accepts a strict subset of Casbin's CSV so that what it accepts is
tokenised exactly as pycasbin's file adapter would (plain ``split(",")`` equals
Casbin's tokenizer when a line has no brackets or quotes). Anything outside the
subset is an error with its ``file:line``; Casbin itself would silently skip an
unknown line type or fail only at decision time on a wrong field count.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from app.core.errors import InvalidPath
from app.edge.paths import normalize_path

GLOBAL_DOMAIN = "*"
CLOSED = "closed"
CLOSED_WRITER = "closed_writer"
READ_ACTIONS = frozenset({"GET", "HEAD", "OPTIONS", "read"})
EFFECTS = ("allow", "deny")
ARITY = {"p": 5, "g": 3, "g2": 2, "g3": 2}
# Checked with ``fullmatch`` (``$`` alone would accept a final "\n"; see domain.identity).
ENGAGEMENT = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}$")
ACTION = re.compile(r"^(\*|[A-Za-z][A-Za-z_]{0,31})$")
OBJECT = re.compile(r"^(\*|/[A-Za-z0-9\-._~/:*%!$&'+=@]*)$")
_CASBIN_NESTING = re.compile(r"[\[\]()\"]")

# The model the compiled decision path implements, its significant lines as shipped
# (``check_model`` compares their tokens: spaces count only where Casbin reads them).
SUPPORTED_MODEL = (
    "[request_definition]",
    "r = sub, dom, obj, act",
    "[policy_definition]",
    "p = sub, dom, obj, act, eft",
    "[role_definition]",
    "g = _, _, _",
    "g2 = _, _",
    "g3 = _, _",
    "[policy_effect]",
    "e = some(where (p.eft == allow)) && !some(where (p.eft == deny))",
    "[matchers]",
    'm = (g(r.sub, p.sub, r.dom) || g2(r.sub, p.sub)) && (p.dom == r.dom || p.dom == "*")'
    ' && keyMatch2(r.obj, p.obj) && (r.act == p.act || p.act == "*")'
    ' && (p.eft == "deny" || !g3(r.dom, "closed") || r.act == "GET" || r.act == "HEAD"'
    ' || r.act == "OPTIONS" || r.act == "read" || g2(r.sub, "closed_writer"))',
)

# error: the policy cannot load; warning: a likely mistake (--strict fails); note: worth a look.
Severity = Literal["error", "warning", "note"]

# The most characters of one value a message quotes. A message goes to the log, the
# readiness detail, the admin API and the CLI: a 5 MB line must not make a 5 MB message.
QUOTE_LIMIT = 200
# The most characters of a whole message (a library's text, or several quoted values).
MESSAGE_LIMIT = 2000


def clip(text: str, limit: int = QUOTE_LIMIT) -> str:
    """``text``, or its first ``limit`` characters, an ellipsis and how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def quote(value: str) -> str:
    """``repr(value)`` of at most ``QUOTE_LIMIT`` characters of it, saying how long it was."""
    if len(value) <= QUOTE_LIMIT:
        return repr(value)
    return f"{value[:QUOTE_LIMIT]!r}... ({len(value)} characters)"


@dataclass(frozen=True, slots=True)
class Issue:
    """One lint finding, located by ``file:line`` (its message at most ``MESSAGE_LIMIT``)."""

    severity: Severity
    location: str
    code: str
    message: str

    def __post_init__(self) -> None:
        if len(self.message) > MESSAGE_LIMIT:  # a value no check quoted with ``quote``
            object.__setattr__(self, "message", clip(self.message, MESSAGE_LIMIT))

    def __str__(self) -> str:
        return f"{self.location}: {self.severity}: {self.message} [{self.code}]"


def listed(issues: Sequence[Issue], limit: int, sep: str) -> str:
    """The first ``limit`` issues joined by ``sep``, and how many more there are."""
    shown = sep.join(map(str, issues[:limit]))
    more = len(issues) - limit
    if more > 0:
        shown += f"{sep}... and {more} more (gateway policy lint lists every one)"
    return shown


@dataclass(frozen=True, slots=True)
class PolicyLine:
    """One policy line: its type, its fields and where it was written."""

    ptype: str
    fields: tuple[str, ...]
    location: str

    @property
    def text(self) -> str:
        return ", ".join((self.ptype, *self.fields))


@dataclass(frozen=True, slots=True)
class PolicySource:
    """The parsed files of one policy directory; ``errors`` block loading."""

    model_path: Path
    policy_path: Path
    lines: tuple[PolicyLine, ...]
    errors: tuple[Issue, ...]
    revision: str

    def of_type(self, ptype: str) -> list[PolicyLine]:
        return [line for line in self.lines if line.ptype == ptype]


def revision_of(contents: dict[str, bytes]) -> str:
    """A short content hash of named file contents, in order."""
    digest = hashlib.sha256()
    for name, data in contents.items():
        digest.update(name.encode() + b"\0" + data + b"\0")
    return digest.hexdigest()[:16]


def policy_revision(*files: Path) -> str:
    """A short content hash of the policy files, in order."""
    return revision_of({path.name: path.read_bytes() for path in files})


# Characters no policy or suite file may hold, comments included: each can make what a
# reviewer sees differ from what is read. A vertical tab, form feed, U+0085 or U+2028
# shows as a line break in a terminal or an editor (and Python's ``splitlines`` breaks
# there) while Casbin's reader splits at "\n" only; a lone carriage return hides what
# precedes it on a terminal; bidirectional overrides and isolates reorder what is
# displayed ("Trojan Source", CVE-2021-42574); zero-width characters and a byte-order
# mark are invisible. Tabs and a "\r" ending a line (CRLF files) are fine.
HIDING = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]"
)


def text_lines(data: bytes, name: str) -> tuple[list[str], list[Issue]]:
    """A file's lines as editors, ``git diff``, ``wc -l`` and Casbin count them.

    Split at "\n" only (a "\r" before it dropped), numbered from 1. Bytes that are
    not UTF-8, and any ``HIDING`` character, are errors with their ``file:line``
    (and no lines are returned: nothing of such a file is used).
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        message = (
            f"byte 0x{data[exc.start]:02X} at column {column} is not UTF-8: save the file as UTF-8"
        )
        return [], [Issue("error", f"{name}:{line}", "encoding", message)]
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    if lines[-1] == "":
        lines.pop()  # the newline ending the last line
    if HIDING.search(text.replace("\r\n", "\n")) is None:
        return lines, []
    issues = []
    for number, shown in enumerate(lines, start=1):
        found = HIDING.search(shown)
        if found is not None:
            issues.append(_hidden(name, number, found.group(), found.start() + 1))
    return [], issues


def _hidden(name: str, number: int, char: str, column: int) -> Issue:
    if char == "\ufeff" and number == 1 and column == 1:
        message = "the file starts with a byte-order mark (U+FEFF): save it as UTF-8 without BOM"
    else:
        message = (
            f"character U+{ord(char):04X} at column {column} is not allowed: it can hide or "
            "reorder text for a reader (Casbin reads lines split at newlines only)"
        )
    return Issue("error", f"{name}:{number}", "hidden_character", message)


@dataclass(frozen=True, slots=True)
class FileRead:
    """One file's bytes as read once, or why not (``data`` is ``None``): ``absent`` when
    there is no regular file there, else ``problem`` is the reason (``Permission denied``)."""

    path: Path
    data: bytes | None
    absent: bool = False
    problem: str | None = None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data or b"").hexdigest()


def read_file(path: Path) -> FileRead:
    """``path``'s bytes from one open; a file that is not a regular one is never read.

    A FIFO or a device would block or never end a read; the type is checked on the
    open descriptor, so a file replaced between a check and the read cannot slip in.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return FileRead(path, None, absent=True)
    except OSError as exc:
        return FileRead(path, None, problem=exc.strerror or type(exc).__name__)
    try:
        with os.fdopen(fd, "rb") as file:
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                return FileRead(path, None, absent=True)
            return FileRead(path, file.read())
    except OSError as exc:
        return FileRead(path, None, problem=exc.strerror or type(exc).__name__)


def read_policy(model_path: Path, policy_path: Path) -> PolicySource:
    """Read and parse both files; an unreadable file raises ``OSError``."""
    return parse_policy(model_path, model_path.read_bytes(), policy_path, policy_path.read_bytes())


def parse_policy(
    model_path: Path, model_bytes: bytes, policy_path: Path, policy_bytes: bytes
) -> PolicySource:
    """Parse both files' bytes; bad lines become errors, and the revision hashes these bytes."""
    revision = revision_of({model_path.name: model_bytes, policy_path.name: policy_bytes})
    model_lines, errors = text_lines(model_bytes, model_path.name)
    if not errors:
        errors = check_model(model_lines, model_path.name)
    policy_lines, unreadable = text_lines(policy_bytes, policy_path.name)
    errors += unreadable
    lines: list[PolicyLine] = []
    for number, raw in enumerate(policy_lines, start=1):
        location = f"{policy_path.name}:{number}"
        parsed = parse_line(raw, location)
        if isinstance(parsed, Issue):
            errors.append(parsed)
        elif parsed is not None:
            lines.append(parsed)
    return PolicySource(model_path, policy_path, tuple(lines), tuple(errors), revision)


# A model line as tokens: a quoted literal (``p.dom == "* "`` is another model); a name
# (``p.eft``: a space inside splits it, as it does for Casbin) with any ``&&``, ``||`` or
# ``!`` touching it, since Casbin rewrites those as words by plain text replacement
# (``||p.act`` reads ``orp_act``, ``||!g3`` reads ``ornot g3``); a two-character operator
# (``= =`` is not ``==``); a space or tab run (free between other tokens); any other
# character (a no-break space is one: Casbin's expressions do not skip it).
_MODEL_TOKEN = re.compile(r'"[^"]*"|(?:[\w.]|&&|\|\||!(?!=))+|==|!=|<=|>=|[ \t]+|.')
# pycasbin compares the effect with its known expressions as a string: spaces count.
_EFFECT_KEY = "e"


def _significant(line: str) -> tuple[str, ...]:
    """``line`` as the model check compares it: its tokens, spaces only where Casbin reads them.

    Casbin reads a section name between the brackets as written (``[ matchers ]`` is
    no ``[matchers]``), and the effect's value character for character; elsewhere
    spaces and tabs between tokens are free.
    """
    text = line.strip(" \t")
    key, equals, value = text.partition("=")
    if text.startswith("["):
        return (text,)
    if equals and key.strip(" \t") == _EFFECT_KEY:
        return (_EFFECT_KEY, "=", value.strip(" \t"))
    return tuple(t for t in _MODEL_TOKEN.findall(text) if t.strip(" \t"))


_SUPPORTED_TOKENS = tuple(_significant(line) for line in SUPPORTED_MODEL)


def check_model(lines: list[str], name: str) -> list[Issue]:
    """The model (``text_lines``) must be the one the compiled decision path implements."""
    significant = tuple(
        _significant(line) for line in lines if line.strip() and not line.lstrip().startswith("#")
    )
    if significant == _SUPPORTED_TOKENS:
        return []
    message = "the model differs from the one the gateway implements; change it with the code"
    return [Issue("error", f"{name}:1", "unsupported_model", message)]


def parse_line(raw: str, location: str) -> PolicyLine | Issue | None:
    """One CSV line as a ``PolicyLine``; ``None`` for blanks and comments."""
    text = raw.strip()
    if not text or text.startswith("#"):
        return None
    if _CASBIN_NESTING.search(text):
        return _error(location, "syntax", "brackets and quotes are not supported")
    tokens = [token.strip() for token in text.split(",")]
    ptype, fields = tokens[0], tuple(tokens[1:])
    if ptype not in ARITY:
        return _error(location, "syntax", f"unknown line type {quote(ptype)} (use p, g, g2 or g3)")
    if len(fields) != ARITY[ptype]:
        return _error(location, "syntax", f"{ptype} needs {ARITY[ptype]} fields, got {len(fields)}")
    problem = _field_problem(ptype, fields)
    if problem:
        return _error(location, "syntax", problem)
    return PolicyLine(ptype, fields, location)


def _field_problem(ptype: str, fields: tuple[str, ...]) -> str | None:
    for value in fields:
        if "#" in value:
            return "inline comments are not supported: Casbin reads them as part of the value"
        if not value:
            return "empty field"
    if ptype == "p":
        return _rule_problem(*fields)
    if ptype == "g3":
        if not ENGAGEMENT.fullmatch(fields[0]) or fields[1] != CLOSED:
            return "g3 lines read: g3, <engagement>, closed"
        return None
    names = fields[:2]
    if not all(NAME.fullmatch(name) for name in names):
        return f"malformed subject or role name in {', '.join(map(clip, names))}"
    if ptype == "g" and not _is_domain(fields[2]):
        return f"engagement {quote(fields[2])} must be an engagement id or *"
    return None


def _rule_problem(sub: str, dom: str, obj: str, act: str, eft: str) -> str | None:
    if not NAME.fullmatch(sub):
        return f"malformed role {quote(sub)}"
    if not _is_domain(dom):
        return f"engagement {quote(dom)} must be an engagement id or *"
    star_ok = obj == "*" or "*" not in obj or (obj.endswith("/*") and "*" not in obj[:-1])
    if not OBJECT.fullmatch(obj) or not star_ok:
        return f"object {quote(obj)} must be a path pattern (segments, :name, a final /*) or *"
    if obj != "*" and (problem := _never_literal(obj)) is not None:
        return f"object {quote(obj)} {problem}"
    if not ACTION.fullmatch(act):
        return f"action {quote(act)} must be an HTTP method, a named action or *"
    if eft not in EFFECTS:
        return f"effect {quote(eft)} must be allow or deny"
    return None


def _never_literal(obj: str) -> str | None:
    """Why the path pattern ``obj`` would not match the path it spells, if it would not.

    ``keyMatch2`` (Casbin's, and the compiled copy) is a regular expression: ``$``
    and ``+`` in a literal segment make it miss its own spelling (a deny of
    ``…/draft+internal/…`` denied nothing), and a ``:`` inside a segment starts a
    parameter there. The edge decides normalised paths only (upper-case escapes,
    unreserved characters decoded, no ``.``/``..``/empty segments, no trailing
    ``/``), so a pattern in any other form never meets a decided path.
    """
    for char in "$+":
        if char in obj:
            return (
                f"contains {char!r}, which keyMatch2 reads as a regular expression: the rule "
                "would never match the path it spells"
            )
    segments = obj.split("/")[1:]
    if any(":" in seg[1:] for seg in segments):
        return "has ':' inside a segment: keyMatch2 reads ':name' only as a whole segment"
    try:
        normalised = normalize_path(obj)
    except InvalidPath as exc:
        return f"is a path the gateway refuses ({exc.detail})"
    if normalised != obj:
        return (
            f"is not in the form the gateway decides paths in ({quote(normalised)}): "
            "it would never match a request"
        )
    return None


def _is_domain(value: str) -> bool:
    return value == GLOBAL_DOMAIN or bool(ENGAGEMENT.fullmatch(value))


def _error(location: str, code: str, message: str) -> Issue:
    return Issue("error", location, code, message)
