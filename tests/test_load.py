"""Load, at CI scale: 32 clients send search/query/get back to back for 10 s while a 2,000-page update and a
storm of file edits (saves, appends, creates, deletes, renames, checkout-like bursts) run, the watcher on.
The machinery is bench/soak.py's (its full scale: 10k pages for 60 s). Only correctness is asserted;
latencies are measured by the benchmark, not here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.soak import MD, run_soak

ARCHIVE = "tldr"


@pytest.mark.skipif(not (MD / f"{ARCHIVE}.tar.gz").is_file(), reason="the shared markdown trees are not here")
def test_clients_get_answers_while_an_update_and_edits_run(model_cache: Path) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("QMDD_", "AGENT_", "XDG_"))}
    environ.update(QMDD_CACHE_DIR=str(model_cache), QMDD_LOG_LEVEL="info", NO_COLOR="1")
    report = run_soak(files=2000, embed_files=0, clients=32, duration=10.0, edit_rate=20.0, burst=200,
                      burst_every=4.0, rescan_every=3.0, seed=7, archive=ARCHIVE, env=environ)
    summary = report.render()
    print(summary)  # with -s: the numbers of this run

    assert report.errors == 0, summary
    assert report.daemon_alive, summary
    assert report.actor_restarts == 0, summary
    assert len(report.requests_per_client) == 32 and min(report.requests_per_client) > 0, summary
    assert all(report.methods[m].latencies_s for m in ("search", "query", "get")), summary
    assert report.update_s is not None and report.update_summary and report.update_summary["indexed"], summary
    assert report.edits["save"] and report.edits["delete"] and report.edits["burst files"], summary
    assert report.on_disk == report.indexed and not report.mismatches, summary
    assert report.consistency_rc == 0, summary
    assert report.ok, summary
