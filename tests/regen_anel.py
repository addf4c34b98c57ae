"""Rewrite tests/fixtures/anel/<command>.json from the current `qmdctl CMD --emit-spec` output.

    python -m tests.regen_anel

Run it after changing the command table, a schema under qmdd/protocol/schemas/ or the error table, then
review the diff: the fixtures are the contract agents rely on (tests/test_anel.py checks it).
"""

from __future__ import annotations

import sys
from pathlib import Path

from qmdctl.emitspec import command_spec, dumps
from qmdctl.spec import COMMANDS

FIXTURES = Path(__file__).parent / "fixtures" / "anel"


def main() -> int:
    FIXTURES.mkdir(parents=True, exist_ok=True)
    wanted = {f"{c.slug}.json" for c in COMMANDS}
    for stale in FIXTURES.glob("*.json"):
        if stale.name not in wanted:
            stale.unlink()
            print(f"removed {stale}")
    for command in COMMANDS:
        path = FIXTURES / f"{command.slug}.json"
        text = dumps(command_spec(command))
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
