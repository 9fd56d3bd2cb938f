"""Who asks, for admission's fairness: a caller is its token's subject, with a share of each stage that the
settings may set per subject or per role (`admission_shares`); everyone else gets the stage's default."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Principal:
    """Who asks, for fairness: the token's subject, and its share of a stage if not the default."""

    name: str = ""
    share: float | None = None


ANONYMOUS = Principal()


def parse_shares(text: str | None) -> dict[str, float]:
    """`catalog-indexer=0.9,role:admin=1.0` -> {"catalog-indexer": 0.9, "role:admin": 1.0}; shares in (0, 1]."""
    table: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        key, _, value = item.partition("=")
        share = float(value)
        if not key or not 0 < share <= 1:
            raise ValueError(f"admission share {item!r}: want NAME=SHARE or role:ROLE=SHARE with 0 < SHARE <= 1")
        table[key.strip()] = share
    return table


def principal_of(subject: str, roles: frozenset[str], table: dict[str, float]) -> Principal:
    """A subject's own entry wins, else the largest of its roles' entries, else the stage's default."""
    if subject in table:
        return Principal(subject, table[subject])
    by_role = [table[f"role:{r}"] for r in roles if f"role:{r}" in table]
    return Principal(subject, max(by_role) if by_role else None)
