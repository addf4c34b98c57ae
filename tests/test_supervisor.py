"""Actor template and supervisor: replies, typed errors, crash → restart, restart budget → degraded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import trio
import trio.testing

from qmdd.actors.base import Actor, Handler, Mailbox, concurrent
from qmdd.actors.supervisor import RestartPolicy, Supervisor
from qmdd.protocol.errors import ErrorCode, QmddError


@dataclass(frozen=True)
class Echo:
    value: Any


@dataclass(frozen=True)
class Fail:
    typed: bool


@dataclass(frozen=True)
class Hold:
    """Handled in turn: answered when `release` is set."""

    release: trio.Event


@dataclass(frozen=True)
class Slow:
    """Handled beside the inbox: answered when `release` is set, or fails once it is (`fail`)."""

    release: trio.Event
    fail: bool | None = None  # None: answer; False: a typed error; True: a bug


class EchoActor(Actor):
    name = "echo"
    instances = 0

    def __init__(self) -> None:
        super().__init__()
        EchoActor.instances += 1
        self.instance = EchoActor.instances

    def handlers(self) -> dict[type, Handler]:
        return {Echo: self._echo, Fail: self._fail, Hold: self._hold, Slow: concurrent(self._slow)}

    async def _hold(self, message: Hold) -> int:
        await message.release.wait()
        return self.instance

    async def _echo(self, message: Echo) -> tuple[int, Any]:
        return self.instance, message.value

    async def _fail(self, message: Fail) -> None:
        if message.typed:
            raise QmddError(ErrorCode.NOT_FOUND, "expected failure")
        raise RuntimeError("bug")

    async def _slow(self, message: Slow) -> int:
        await message.release.wait()
        if message.fail is not None:
            await self._fail(Fail(typed=not message.fail))
        return self.instance


def run(test: Any) -> None:
    async def main() -> None:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                supervisor = Supervisor(nursery, RestartPolicy(max_restarts=2, window_s=60, backoff_initial_s=0.001))
                mailbox = Mailbox("echo")
                EchoActor.instances = 0
                await supervisor.start_actor(mailbox, EchoActor)
                await test(supervisor, mailbox)
                nursery.cancel_scope.cancel()

    trio.run(main)


def test_typed_error_reaches_caller_and_actor_keeps_running() -> None:
    async def test(supervisor: Supervisor, mailbox: Mailbox) -> None:
        assert await mailbox.call(Echo(1)) == (1, 1)
        with pytest.raises(QmddError) as e:
            await mailbox.call(Fail(typed=True))
        assert e.value.code is ErrorCode.NOT_FOUND
        assert await mailbox.call(Echo(2)) == (1, 2)  # same instance: no restart
        stats = supervisor.statistics()["echo"]
        assert stats["restarts"] == 0 and stats["errors"] == 1 and stats["handled"] == 3

    run(test)


def test_crash_restarts_actor_on_the_same_inbox() -> None:
    async def test(supervisor: Supervisor, mailbox: Mailbox) -> None:
        with pytest.raises(QmddError) as e:
            await mailbox.call(Fail(typed=False))
        assert e.value.code is ErrorCode.BACKEND_UNAVAILABLE
        assert await mailbox.call(Echo("after")) == (2, "after")
        stats = supervisor.statistics()["echo"]
        assert stats["restarts"] == 1 and "bug" in stats["last_crash"]
        assert not supervisor.degraded

    run(test)


def test_crash_loop_trips_budget_and_dead_letters_are_answered() -> None:
    async def test(supervisor: Supervisor, mailbox: Mailbox) -> None:
        for _ in range(3):
            with pytest.raises(QmddError):
                await mailbox.call(Fail(typed=False))
        with pytest.raises(QmddError) as e:
            await mailbox.call(Echo("late"))
        assert e.value.code is ErrorCode.BACKEND_UNAVAILABLE
        assert supervisor.degraded
        assert supervisor.statistics()["echo"]["status"] == "failed"

    run(test)


def test_cast_nowait_refuses_when_inbox_full() -> None:
    async def main() -> None:
        mailbox = Mailbox("slow", size=1)
        mailbox.cast_nowait(Echo(1))
        with pytest.raises(QmddError) as e:
            mailbox.cast_nowait(Echo(2))
        assert e.value.code is ErrorCode.BACKEND_UNAVAILABLE
        assert mailbox.queue_depth() == 1

    trio.run(main)


def test_a_concurrent_message_is_not_read_behind_one_handled_in_turn() -> None:
    async def test(supervisor: Supervisor, mailbox: Mailbox) -> None:
        held, released = trio.Event(), trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(mailbox.call, Hold(held))
            await trio.testing.wait_all_tasks_blocked()
            released.set()
            # Answered while Hold is being handled (it used to wait in the inbox behind it); an Echo, in
            # turn, still waits.
            assert await mailbox.call(Slow(released)) == 1
            with trio.move_on_after(0.2):
                await mailbox.call(Echo("after"))
                raise AssertionError("answered before the message in turn ahead of it")
            held.set()
        assert await mailbox.call(Echo("after")) == (1, "after")
        assert mailbox.queue_depth() == 0

    run(test)


def test_a_concurrent_handler_is_answered_beside_the_inbox_and_a_typed_error_only_replies() -> None:
    async def test(supervisor: Supervisor, mailbox: Mailbox) -> None:
        release = trio.Event()
        answers: list[Any] = []

        async def ask(message: Slow) -> None:
            try:
                answers.append(await mailbox.call(message))
            except QmddError as exc:
                answers.append(exc.code)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask, Slow(release))
            nursery.start_soon(ask, Slow(release, fail=False))
            await trio.testing.wait_all_tasks_blocked()
            assert await mailbox.call(Echo("meanwhile")) == (1, "meanwhile")  # the inbox is not held
            release.set()
        assert sorted(answers, key=str) == sorted([1, ErrorCode.NOT_FOUND], key=str)
        stats = supervisor.statistics()["echo"]
        assert (stats["restarts"], stats["handled"], stats["errors"]) == (0, 3, 1)

    run(test)


def test_a_concurrent_handler_that_crashes_answers_and_restarts_the_actor() -> None:
    async def test(supervisor: Supervisor, mailbox: Mailbox) -> None:
        release = trio.Event()
        release.set()
        with pytest.raises(QmddError) as e:
            await mailbox.call(Slow(release, fail=True))
        assert e.value.code is ErrorCode.BACKEND_UNAVAILABLE and "bug" in e.value.message
        assert await mailbox.call(Echo("after")) == (2, "after")
        assert supervisor.statistics()["echo"]["restarts"] == 1

    run(test)


def test_requests_in_hand_when_the_actor_crashes_are_answered() -> None:
    async def test(supervisor: Supervisor, mailbox: Mailbox) -> None:
        waiting = trio.Event()  # never set: these two are still in hand when the crash comes
        outcomes: list[ErrorCode] = []

        async def ask() -> None:
            with pytest.raises(QmddError) as e:
                await mailbox.call(Slow(waiting))
            outcomes.append(e.value.code)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask)
            nursery.start_soon(ask)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(QmddError):
                await mailbox.call(Fail(typed=False))
        assert outcomes == [ErrorCode.BACKEND_UNAVAILABLE] * 2
        assert await mailbox.call(Echo("after")) == (2, "after")

    run(test)
