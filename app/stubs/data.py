"""Seeded demo data for the stub services: a consultancy's engagements."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

ENGAGEMENTS: list[dict[str, Any]] = [
    {"id": "acme-2026", "client": "Acme Corp", "kind": "external pentest", "status": "active"},
    {"id": "globex-cloud", "client": "Globex", "kind": "cloud config review", "status": "active"},
    {"id": "initech-redteam", "client": "Initech", "kind": "red team", "status": "closed"},
]

_TITLES = [
    ("SQL injection in login form", "critical"),
    ("Stored XSS in comment field", "high"),
    ("Missing HSTS header", "low"),
    ("Outdated TLS configuration", "medium"),
    ("Verbose server banner", "info"),
    ("IDOR on invoice download", "high"),
    ("Public S3 bucket with backups", "critical"),
    ("Weak password policy", "medium"),
]
_ANALYSTS = ["alice", "bob", "erin"]


def seed_findings(seed: int) -> dict[str, list[dict[str, Any]]]:
    """Two to five findings per engagement, the same for the same seed."""
    rng = random.Random(seed)
    epoch = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    out: dict[str, list[dict[str, Any]]] = {}
    for engagement in ENGAGEMENTS:
        items = []
        for n, (title, severity) in enumerate(rng.sample(_TITLES, rng.randint(2, 5)), start=1):
            items.append(
                {
                    "id": f"F-{n:04d}",
                    "engagement_id": engagement["id"],
                    "title": title,
                    "severity": severity,
                    "status": rng.choice(["open", "open", "fixed", "accepted"]),
                    "description": f"{title} observed during the {engagement['kind']}.",
                    "created_by": rng.choice(_ANALYSTS),
                    "created_at": (epoch + timedelta(hours=rng.randint(1, 2000))).isoformat(),
                }
            )
        out[engagement["id"]] = items
    return out


_REPORT_KINDS = ["interim", "executive summary", "retest"]


def seed_reports(seed: int) -> dict[str, list[dict[str, Any]]]:
    """One to three reports per engagement, the same for the same seed."""
    rng = random.Random(seed * 31 + 1)
    epoch = datetime(2026, 2, 1, 9, 0, tzinfo=UTC)
    out: dict[str, list[dict[str, Any]]] = {}
    for engagement in ENGAGEMENTS:
        out[engagement["id"]] = [
            {
                "id": f"R-{n:04d}",
                "engagement_id": engagement["id"],
                "kind": rng.choice(_REPORT_KINDS),
                "status": "final" if engagement["status"] == "closed" else "draft",
                "size_bytes": rng.randint(64, 512) * 1024,
                "created_at": (epoch + timedelta(days=rng.randint(1, 90))).isoformat(),
            }
            for n in range(1, rng.randint(1, 3) + 1)
        ]
    return out


def report_chunks(report_id: str, size: int, chunk: int = 64 * 1024) -> list[bytes]:
    """Deterministic report bytes, split in chunks (a PDF stand-in)."""
    line = f"%report {report_id} ".encode()
    block = (line * (chunk // len(line) + 1))[:chunk]
    full, rest = divmod(size, chunk)
    return [block] * full + ([block[:rest]] if rest else [])
