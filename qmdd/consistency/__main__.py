"""`python -m qmdd.consistency`: the checker's command line (see the package's docstring)."""

from __future__ import annotations

import argparse
import json
import sys

from qmdd.consistency import EXIT_CONSISTENT, EXIT_INCONSISTENT, EXIT_NOT_CHECKED, NotCheckable, check_index
from qmdd.consistency import __doc__ as package_doc
from qmdd.protocol.errors import QmddError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qmdd.consistency", description=package_doc.split("\n\n")[0],
                                     epilog="exit status: 0 consistent, 1 inconsistent, 2 not checked")
    parser.add_argument("--mode", choices=["strict", "partial"], default="strict",
                        help="strict: after a completed update; partial: right after a crash (default: strict)")
    parser.add_argument("--snapshots-current", action="store_true",
                        help="in partial mode, also require the snapshots to match SQLite (after a graceful stop)")
    parser.add_argument("--rechunk", type=int, default=None, metavar="N",
                        help="re-chunk N up-to-date documents and compare their chunks (default: all)")
    parser.add_argument("--vector-sample", type=int, default=64, metavar="N",
                        help="compare N stored vectors with SQLite's (default: 64)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    try:
        report = check_index(mode=args.mode, snapshots_current=args.snapshots_current or None,
                             rechunk=args.rechunk, vector_sample=args.vector_sample)
    except (NotCheckable, QmddError) as exc:
        print(json.dumps({"error": str(exc)}) if args.json else f"not checked: {exc}", file=sys.stderr)
        return EXIT_NOT_CHECKED
    print(json.dumps(report.to_json(), indent=1) if args.json else report.render())
    return EXIT_CONSISTENT if report.ok else EXIT_INCONSISTENT


if __name__ == "__main__":
    sys.exit(main())
