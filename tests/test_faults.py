"""Supervision under injected faults: an actor killed by a fault is restarted and serves again; a crash
loop trips the restart budget, and the daemon then reports itself degraded instead of spinning, while
everything that does not need the failed actor keeps working.

The daemon tests arm the fault point `actor.<actor>.<Message>` (see qmdd.faults) through QMDD_FAULTS
in the environment the auto-started daemon inherits; the unit tests arm it in-process."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from qmdd import faults
from qmdd.actors.base import Mailbox
from qmdd.actors.supervisor import RestartPolicy, Supervisor
from qmdd.protocol.errors import ErrorCode, QmddError
from tests.conftest import Env, exited
from tests.test_supervisor import Echo, EchoActor

# --- unit: the fault point in the Actor template, the restart policy ------------------------------


@pytest.fixture
def armed(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str, int], None]]:
    """Arm fault points in this process only for this test."""
    monkeypatch.setattr(faults, "_armed", {})
    monkeypatch.setattr(faults, "enabled", False)
    yield faults.arm


Body = Callable[[Supervisor, Mailbox], Awaitable[None]]


def run_supervised(body: Body, policy: RestartPolicy) -> None:
    """`body` against one supervised EchoActor, in virtual time (backoffs take no real time)."""
    async def main() -> None:
        with trio.fail_after(600):  # virtual seconds
            async with trio.open_nursery() as nursery:
                supervisor = Supervisor(nursery, policy)
                mailbox = Mailbox("echo")
                EchoActor.instances = 0
                await supervisor.start_actor(mailbox, EchoActor)
                await body(supervisor, mailbox)
                nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def unavailable(mailbox: Mailbox, message: Any) -> QmddError:
    with pytest.raises(QmddError) as e:
        await mailbox.call(message)
    assert e.value.code is ErrorCode.BACKEND_UNAVAILABLE
    return e.value


def test_actor_fault_point_fails_like_a_handler_bug(armed: Callable[[str, int], None]) -> None:
    armed("actor.echo.Echo", 1)

    async def body(supervisor: Supervisor, mailbox: Mailbox) -> None:
        error = await unavailable(mailbox, Echo("first"))
        assert "injected fault at actor.echo.Echo" in error.message
        assert await mailbox.call(Echo("second")) == (2, "second")  # a fresh instance, same inbox
        stats = supervisor.statistics()["echo"]
        assert (stats["status"], stats["restarts"]) == ("running", 1)
        assert "InjectedFault" in stats["last_crash"]
        assert not supervisor.degraded and supervisor.degraded_reason is None

    run_supervised(body, RestartPolicy())


def test_unarmed_fault_points_are_not_even_checked(armed: Callable[[str, int], None],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def never(point: str) -> None:
        raise AssertionError(f"checked {point} with no fault armed")

    monkeypatch.setattr(faults, "check", never)

    async def body(supervisor: Supervisor, mailbox: Mailbox) -> None:
        assert await mailbox.call(Echo(1)) == (1, 1)

    run_supervised(body, RestartPolicy())


def test_crash_loop_trips_the_budget_quietly(armed: Callable[[str, int], None],
                                             caplog: pytest.LogCaptureFixture) -> None:
    armed("actor.echo.Echo", 100)
    policy = RestartPolicy(max_restarts=5, window_s=60, backoff_initial_s=0.05, backoff_max_s=5)

    async def body(supervisor: Supervisor, mailbox: Mailbox) -> None:
        started = trio.current_time()
        for _ in range(policy.max_restarts + 1):
            await unavailable(mailbox, Echo("x"))
        # The crashes came from requests, each waiting out the backoff before it reached the actor.
        await trio.testing.wait_all_tasks_blocked()
        assert supervisor.statistics()["echo"]["status"] == "failed"
        assert trio.current_time() - started == pytest.approx(0.05 * (1 + 2 + 4 + 8 + 16))
        assert EchoActor.instances == policy.max_restarts + 1  # no instance built after giving up
        assert supervisor.degraded
        reason = supervisor.degraded_reason
        assert reason is not None and reason.startswith("echo: crashed 6 times in 60s")
        assert "InjectedFault" in reason
        # Dead letters: answered at once, forever, without another instance or another log line.
        logged = len(caplog.records)
        before = trio.current_time()
        for _ in range(200):
            error = await unavailable(mailbox, Echo("late"))
        assert "down after repeated crashes" in error.message and "InjectedFault" in error.message
        assert trio.current_time() == before
        assert EchoActor.instances == policy.max_restarts + 1
        assert len(caplog.records) == logged
        stats = supervisor.statistics()["echo"]
        assert (stats["restarts"], stats["queue_depth"]) == (policy.max_restarts, 0)

    run_supervised(body, policy)
    crashed = [r for r in caplog.records if "crashed" in r.getMessage()]
    assert len(crashed) == policy.max_restarts + 2  # one line per crash, one for giving up


def test_backoff_starts_over_after_a_quiet_window(armed: Callable[[str, int], None]) -> None:
    policy = RestartPolicy(max_restarts=5, window_s=10, backoff_initial_s=0.05, backoff_max_s=5)

    async def crash_then_recover(mailbox: Mailbox) -> float:
        """Seconds from a crash until the restarted actor answers."""
        armed("actor.echo.Echo", 1)
        await unavailable(mailbox, Echo("boom"))
        crashed = trio.current_time()
        await mailbox.call(Echo("ok"))
        return trio.current_time() - crashed

    async def body(supervisor: Supervisor, mailbox: Mailbox) -> None:
        assert await crash_then_recover(mailbox) == pytest.approx(0.05)
        assert await crash_then_recover(mailbox) == pytest.approx(0.1)
        assert await crash_then_recover(mailbox) == pytest.approx(0.2)
        await trio.sleep(policy.window_s + 1)  # those crashes leave the window
        assert await crash_then_recover(mailbox) == pytest.approx(0.05)
        stats = supervisor.statistics()["echo"]
        assert (stats["status"], stats["restarts"]) == ("running", 4)
        assert not supervisor.degraded

    run_supervised(body, policy)


# --- against a real daemon -----------------------------------------------------------------------


def arm(env: Env, spec: str) -> None:
    """Faults for the daemon the next qmdctl call starts (none may be running yet)."""
    assert env.daemon_pid() is None
    env.vars["QMDD_FAULTS"] = spec


def failing(env: Env, *args: str) -> dict[str, Any]:
    """Run a qmdctl command that must fail with BACKEND_UNAVAILABLE; its problem details."""
    proc = env.run(*args, "--json", check=False)
    assert proc.returncode == ErrorCode.BACKEND_UNAVAILABLE.spec.exit_code, (proc.stdout, proc.stderr)
    details: dict[str, Any] = json.loads(proc.stderr)
    assert details["code"] == "BACKEND_UNAVAILABLE"
    return details


def actor(env: Env, name: str) -> dict[str, Any]:
    status = env.json("status")
    assert status["state"] == "ok", status["actors"]
    found: dict[str, Any] = status["actors"][name]
    return found


def assert_restarted_once(env: Env, name: str, message: str) -> None:
    with env.client() as client:  # the new instance may still be starting (after its backoff)
        wait_for(lambda: client.call("status")["actors"][name]["status"] != "restarting", 10, f"{name} to restart")
    stats = actor(env, name)
    assert (stats["status"], stats["restarts"]) == ("running", 1), stats
    assert f"InjectedFault: injected fault at actor.{name}.{message}" in stats["last_crash"]


def test_bm25_actor_restarts_after_a_crash_and_reloads_its_index(env: Env, notes: Path) -> None:
    arm(env, "actor.bm25.Bm25Query=1")
    env.run("collection", "add", str(notes), "--name", "notes")
    error = failing(env, "search", "gnome-screenshot")
    assert "bm25" in error["detail"] and "injected fault" in error["detail"]
    assert_restarted_once(env, "bm25", "Bm25Query")
    assert env.json("search", "gnome-screenshot")[0]["file"] == "qmd://notes/alpha.md"
    assert actor(env, "bm25")["loaded_from"] == "snapshot"  # the new instance reloaded from disk
    # Writes reach the new instance too.
    (notes / "delta.md").write_text("# Delta\n\nnarwhal sightings\n")
    env.run("update")
    assert env.json("search", "narwhal")[0]["file"] == "qmd://notes/delta.md"


def test_a_failing_step_after_bm25_fails_the_search_alone(env: Env, notes: Path) -> None:
    # Re-scoring and rendering run in the BM25 actor's worker thread; their failure is the request's.
    arm(env, "search.rank=1")
    env.run("collection", "add", str(notes), "--name", "notes")
    proc = env.run("search", "gnome-screenshot", "--json", check=False)
    assert proc.returncode == ErrorCode.INTERNAL.spec.exit_code, (proc.stdout, proc.stderr)
    assert "injected fault at search.rank" in json.loads(proc.stderr)["detail"]
    stats = actor(env, "bm25")
    assert (stats["status"], stats["restarts"], stats["errors"]) == ("running", 0, 0), stats
    assert env.json("search", "gnome-screenshot")[0]["file"] == "qmd://notes/alpha.md"


def test_indexer_actor_restarts_after_a_crash(env: Env, notes: Path) -> None:
    arm(env, "actor.indexer.ScanCollections=1")
    env.run("collection", "add", str(notes), "--name", "notes", "--no-update")
    error = failing(env, "update")
    assert "indexer" in error["detail"]
    assert_restarted_once(env, "indexer", "ScanCollections")
    summary = env.json("update")[0]
    assert summary["indexed"] == 4
    assert env.json("search", "gnome-screenshot")[0]["file"] == "qmd://notes/alpha.md"


def test_vectors_actor_restarts_after_a_crash(env: Env, notes: Path) -> None:
    # The indexer asks the vectors actor to save its snapshot at the end of every update.
    arm(env, "actor.vectors.SaveSnapshot=1")
    env.run("collection", "add", str(notes), "--name", "notes", "--no-update")
    error = failing(env, "update")
    assert "vectors" in error["detail"]
    assert_restarted_once(env, "vectors", "SaveSnapshot")
    assert actor(env, "indexer")["restarts"] == 0  # a typed error for the indexer, not a crash
    env.run("update")
    assert env.json("search", "gnome-screenshot")[0]["file"] == "qmd://notes/alpha.md"
    assert actor(env, "vectors")["status"] == "running"


def test_embedder_actor_restarts_after_a_crash(env: Env) -> None:
    arm(env, "actor.embedder.ModelStatus=1")
    env.run("daemon", "start")
    error = failing(env, "model", "list")
    assert "embedder" in error["detail"]
    assert_restarted_once(env, "embedder", "ModelStatus")
    assert env.json("model", "list")["models"]


def test_watcher_actor_restarts_after_a_crash_and_status_survives_it(env: Env, notes: Path) -> None:
    arm(env, "actor.watcher.WatchStatus=1")
    env.run("collection", "add", str(notes), "--name", "notes")
    first = env.json("status")  # asks the watcher, which crashes: status answers all the same
    assert first["state"] == "ok" and first["collections"][0]["watch"]["state"] == "unknown"
    assert_restarted_once(env, "watcher", "WatchStatus")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_crash_loop_degrades_the_daemon_instead_of_spinning(env: Env, notes: Path) -> None:
    arm(env, "actor.bm25.Bm25Query=100")
    env.run("collection", "add", str(notes), "--name", "notes")
    pid = env.daemon_pid()
    assert pid is not None
    search = {"query": "gnome-screenshot"}
    with env.client() as client:
        def bm25_failed() -> bool:
            with pytest.raises(QmddError) as e:
                client.call("search", search)
            assert e.value.code is ErrorCode.BACKEND_UNAVAILABLE
            return bool(client.call("status")["actors"]["bm25"]["status"] == "failed")

        wait_for(bm25_failed, 30, "the restart budget to run out")
        status = client.call("status")
        assert status["state"] == "degraded"
        bm25 = status["actors"]["bm25"]
        assert bm25["restarts"] == 5 and "InjectedFault" in bm25["last_crash"]
        assert all(a["status"] == "running" for name, a in status["actors"].items() if name != "bm25")

        # Given up: every search fails fast, with the cause, and nothing restarts any more.
        log_size = env.paths.log_file.stat().st_size
        for _ in range(50):
            started = time.monotonic()
            with pytest.raises(QmddError) as e:
                client.call("search", search)
            assert time.monotonic() - started < 1
            assert e.value.code is ErrorCode.BACKEND_UNAVAILABLE
            assert "down after repeated crashes" in e.value.message
        assert client.call("status")["actors"]["bm25"]["restarts"] == 5
        # ...and quietly: no busy loop, no line logged per refused request.
        before = cpu_seconds(pid)
        time.sleep(1)
        assert cpu_seconds(pid) - before < 0.3
        with env.paths.log_file.open(encoding="utf-8") as log:
            log.seek(log_size)
            noisy = [line for line in log if " DEBUG " not in line and " INFO " not in line]
        assert noisy == []

        # Everything that does not need BM25 keeps working.
        assert client.call("ping")["pong"] is True
        got = client.call("get", {"target": "notes/alpha.md"})
        assert "gnome-screenshot" in got["body"]
        assert {c["name"] for c in client.call("collection.list")} == {"notes"}
        assert client.call("ls", {"target": "notes"})["files"]
        # An update indexes into SQLite but cannot feed BM25: a typed error, no cascade into the indexer.
        (notes / "delta.md").write_text("# Delta\n\nnarwhal\n")
        with pytest.raises(QmddError) as e:
            client.call("update", {})
        assert e.value.code is ErrorCode.BACKEND_UNAVAILABLE
        status = client.call("status")
        assert status["actors"]["indexer"]["status"] == "running"
        assert status["actors"]["indexer"]["restarts"] == 0
        assert status["state"] == "degraded"

    # The text status says so, and names the actor.
    text = env.run("status").stdout
    assert "degraded" in text
    assert any(line.split()[:2] == ["bm25", "failed"] for line in text.splitlines())
    # A degraded daemon still stops cleanly, and the next one starts healthy (faults disarmed).
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: exited(pid), 15, "the daemon to stop")
    assert "qmdd stopped" in env.paths.log_file.read_text()
    del env.vars["QMDD_FAULTS"]
    assert env.json("search", "narwhal")[0]["file"] == "qmd://notes/delta.md"
    assert env.json("status")["state"] == "ok"


def test_status_still_answers_when_the_embedder_is_given_up_on(env: Env, notes: Path) -> None:
    arm(env, "actor.embedder.ModelStatus=100")
    env.run("collection", "add", str(notes), "--name", "notes")
    with env.client() as client:
        for _ in range(6):  # the initial run and five restarts
            with pytest.raises(QmddError) as e:
                client.call("model.list")
            assert e.value.code is ErrorCode.BACKEND_UNAVAILABLE
        status = client.call("status")
    assert status["state"] == "degraded"
    assert status["actors"]["embedder"]["status"] == "failed"
    assert env.json("search", "gnome-screenshot")[0]["file"] == "qmd://notes/alpha.md"
