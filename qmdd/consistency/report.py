"""The consistency checker's findings and report, and the facts its passes hand on to each other."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Mode = Literal["strict", "partial"]
EXAMPLES = 5
EXIT_CONSISTENT, EXIT_INCONSISTENT, EXIT_NOT_CHECKED = 0, 1, 2


class NotCheckable(Exception):
    """The index cannot be checked now: a daemon is using it, or there is none."""


@dataclass
class Finding:
    code: str
    message: str
    count: int = 0
    examples: list[str] = field(default_factory=list)


@dataclass
class Report:
    data_dir: str
    mode: str
    snapshots_current: bool
    counts: Counter[str] = field(default_factory=Counter)
    problems: list[Finding] = field(default_factory=list)
    notices: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def codes(self) -> set[str]:
        return {f.code for f in self.problems}

    def add(self, problem: bool, code: str, message: str, example: object = None) -> None:
        """Record a finding; repeats of a code only count up and keep a few examples."""
        findings = self.problems if problem else self.notices
        found = next((f for f in findings if f.code == code), None)
        if found is None:
            found = Finding(code, message)
            findings.append(found)
        found.count += 1
        if example is not None and len(found.examples) < EXAMPLES:
            found.examples.append(str(example))

    def to_json(self) -> dict[str, Any]:
        return {"data_dir": self.data_dir, "mode": self.mode, "snapshots_current": self.snapshots_current,
                "consistent": self.ok, "counts": dict(sorted(self.counts.items())),
                "problems": [asdict(f) for f in self.problems], "notices": [asdict(f) for f in self.notices]}

    def render(self) -> str:
        lines = [f"{self.data_dir} ({self.mode} check): {'CONSISTENT' if self.ok else 'INCONSISTENT'}",
                 "  " + ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))]
        for title, findings in (("problems", self.problems), ("notices (not inconsistencies)", self.notices)):
            if findings:
                lines.append(f"{title}:")
            for f in findings:
                lines.append(f"  [{f.code}] x{f.count}: {f.message}")
                lines.extend(f"      e.g. {e}" for e in f.examples)
        return "\n".join(lines)


@dataclass
class Facts:
    """What the SQLite pass learned that the later passes need."""

    database_id: str | None = None
    owners: dict[int, tuple[int, int]] = field(default_factory=dict)  # chunk id -> (doc id, collection id)
    chunks_per_doc: Counter[int] = field(default_factory=Counter)
    max_chunk_id: int = 0  # the highest id SQLite ever handed out: ids are never reused
    vector_bytes: dict[str, set[int]] = field(default_factory=dict)  # fingerprint -> blob lengths
