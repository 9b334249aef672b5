"""Request and response models of ``/admin/policy/explain`` and ``/admin/policy/query``.

The engagement is always the path's, as the gateway decides it: a request may
name it, and one that disagrees is a 422 (``app.authz.fields``). Methods are
upper-case HTTP methods or lower-case named actions.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.authz.closed import ClosedFact
from app.authz.compiled import Rule
from app.authz.explain import Explanation, HeldRole, NearMiss
from app.authz.fields import Action, DecisionPath, EngagementOrGlobal, resolve_engagement
from app.authz.query import Grantee, Permission, WhatCan, WhoCan
from app.domain.identity import GROUP_PATTERN, SUBJECT_PATTERN
from app.edge.paths import MAX_PATH_LENGTH

Subject = Annotated[str, Field(pattern=SUBJECT_PATTERN.pattern)]
Groups = Annotated[list[Annotated[str, Field(pattern=GROUP_PATTERN.pattern)]], Field(max_length=32)]
# The path the edge would decide (at most 4,096 characters, its own check) and a query:
# 2,048 refused paths the gateway itself decides.
# The query is not decided, but counts: a path past the edge's limit is refused whole.
# The schema shows the characters the edge takes (app/edge/paths.py: escapes as %XX), then
# any query without a fragment: a client generated from it sends no "000" for a 422.
PATH_PATTERN = r"^/([A-Za-z0-9\-._~!$&'()*+,=:@/]|%[0-9A-Fa-f]{2})*(\?[^#]*)?$"
Path = Annotated[
    DecisionPath,
    Field(min_length=1, max_length=MAX_PATH_LENGTH, json_schema_extra={"pattern": PATH_PATTERN}),
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _PathRequest(_Model):
    engagement: EngagementOrGlobal | None = None
    path: Path

    @model_validator(mode="after")
    def _engagement_of_the_path(self) -> Self:
        self.engagement = resolve_engagement(self.path, self.engagement)
        return self

    @property
    def domain(self) -> str:
        assert self.engagement is not None  # set by the validator
        return self.engagement


class ExplainRequest(_PathRequest):
    """A hypothetical request to decide against the policy in force and the engagement state."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "subject": "alice",
                    "groups": ["red-team"],
                    "method": "POST",
                    "path": "/v1/engagements/acme-2026/findings",
                }
            ]
        },
    )

    subject: Subject
    groups: Groups = Field(default_factory=list)
    method: Action


class ClosedOut(_Model):
    """Why the engagement counts as closed, and where that fact came from."""

    source: str
    ref: str
    at: datetime | None
    by: str | None
    description: str

    @classmethod
    def of(cls, fact: ClosedFact | None) -> ClosedOut | None:
        if fact is None:
            return None
        at = datetime.fromtimestamp(fact.at, tz=UTC) if fact.at else None
        return cls(source=fact.source, ref=fact.ref, at=at, by=fact.by or None,
                   description=fact.describe())  # fmt: skip


class LinkOut(_Model):
    kind: Literal["g", "g2"]
    child: str
    role: str
    domain: str
    location: str


class HeldRoleOut(_Model):
    """A role of the subject (or a group) in the engagement, or global (``scope: "*"``)."""

    principal: str
    role: str
    scope: str
    links: list[LinkOut]

    @classmethod
    def of(cls, held: HeldRole) -> HeldRoleOut:
        links = [LinkOut.model_validate(link, from_attributes=True) for link in held.links]
        return cls(principal=held.principal, role=held.role, scope=held.scope, links=links)


class NearMissOut(_Model):
    """An allow rule that missed by one thing: ``differs`` says which, ``detail`` how."""

    rule: list[str]
    rule_location: str
    differs: Literal["closed", "overridden", "role", "domain", "action", "object"]
    detail: str

    @classmethod
    def of(cls, miss: NearMiss) -> NearMissOut:
        return cls(rule=list(miss.rule.fields), rule_location=miss.rule.location,
                   differs=miss.differs, detail=miss.detail)  # fmt: skip


class ExplainResponse(_Model):
    """The decision, its rule and role chain, the roles behind it and what nearly matched."""

    decision: Literal["allow", "deny"]
    reason: str
    matched_rule: list[str]
    rule_location: str | None
    role_chain: list[str]
    revision: str
    subject: str
    groups: list[str]
    engagement: str
    method: str
    path: str
    closed: ClosedOut | None
    roles: list[HeldRoleOut]
    near_misses: list[NearMissOut]

    @classmethod
    def of(cls, answer: Explanation) -> ExplainResponse:
        d = answer.decision
        return cls(
            decision="allow" if d.allowed else "deny",
            reason=d.reason,
            matched_rule=list(d.matched_rule),
            rule_location=d.rule_location,
            role_chain=list(d.role_chain),
            revision=d.revision,
            subject=d.subject,
            groups=list(d.groups),
            engagement=d.engagement,
            method=d.action,
            path=d.obj,
            closed=ClosedOut.of(d.closed),
            roles=[HeldRoleOut.of(r) for r in (*answer.roles_here, *answer.roles_global)],
            near_misses=[NearMissOut.of(m) for m in answer.near_misses],
        )


class WhoCanQuery(_PathRequest):
    """Who may do ``action`` on ``path`` (in the path's engagement)?"""

    query: Literal["who_can"]
    action: Action


class WhatCanQuery(_Model):
    """What may ``subject`` (with ``groups``) do: in ``engagement``, or wherever it has roles."""

    query: Literal["what_can"]
    subject: Subject
    groups: Groups = Field(default_factory=list)
    engagement: EngagementOrGlobal | None = None


PolicyQuery = Annotated[WhoCanQuery | WhatCanQuery, Field(discriminator="query")]


class RuleOut(_Model):
    fields: list[str]
    location: str

    @classmethod
    def of(cls, rule: Rule) -> RuleOut:
        return cls(fields=list(rule.fields), location=rule.location)


class GranteeOut(_Model):
    name: str
    kind: Literal["subject", "group", "role"]
    rule: RuleOut
    role_chain: list[str]

    @classmethod
    def of(cls, grantee: Grantee) -> GranteeOut:
        return cls(name=grantee.name, kind=grantee.kind,
                   rule=RuleOut.of(grantee.rule), role_chain=list(grantee.role_chain))  # fmt: skip


class WhoCanOut(_Model):
    """Subjects (decided without groups), groups and roles the policy allows, each with its rule."""

    query: Literal["who_can"] = "who_can"
    engagement: str
    path: str
    action: str
    revision: str
    closed: ClosedOut | None
    subjects: list[GranteeOut]
    groups: list[GranteeOut]
    roles: list[GranteeOut]

    @classmethod
    def of(cls, answer: WhoCan) -> WhoCanOut:
        def kind(name: str) -> list[GranteeOut]:
            return [GranteeOut.of(g) for g in answer.of_kind(name)]

        return cls(engagement=answer.engagement, path=answer.obj, action=answer.action,
                   revision=answer.revision, closed=ClosedOut.of(answer.closed),
                   subjects=kind("subject"), groups=kind("group"), roles=kind("role"))  # fmt: skip


class PermissionOut(_Model):
    object: str
    action: str
    rule: RuleOut
    role_chain: list[str]
    reads_only: bool

    @classmethod
    def of(cls, p: Permission) -> PermissionOut:
        return cls(object=p.rule.obj, action=p.rule.act, rule=RuleOut.of(p.rule),
                   role_chain=list(p.role_chain), reads_only=p.reads_only)  # fmt: skip


class EngagementPermissions(_Model):
    """In one engagement: what is allowed, and the denies that carve out of it."""

    engagement: str
    label: str
    closed: ClosedOut | None
    refused: str | None
    allows: list[PermissionOut]
    denies: list[PermissionOut]

    @classmethod
    def of(cls, label: str, answer: WhatCan) -> EngagementPermissions:
        return cls(engagement=answer.engagement, label=label, closed=ClosedOut.of(answer.closed),
                   refused=answer.refused, allows=[PermissionOut.of(p) for p in answer.allows],
                   denies=[PermissionOut.of(p) for p in answer.denies])  # fmt: skip


class WhatCanOut(_Model):
    query: Literal["what_can"] = "what_can"
    subject: str
    groups: list[str]
    revision: str
    engagements: list[EngagementPermissions]
