"""Actor template and supervisor: replies, typed errors, crash → restart, restart budget → degraded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import trio

from qmdd.actors.base import Actor, Handler, Mailbox
from qmdd.actors.supervisor import RestartPolicy, Supervisor
from qmdd.protocol.errors import ErrorCode, QmddError


@dataclass(frozen=True)
class Echo:
    value: Any


@dataclass(frozen=True)
class Fail:
    typed: bool


class EchoActor(Actor):
    name = "echo"
    instances = 0

    def __init__(self) -> None:
        super().__init__()
        EchoActor.instances += 1
        self.instance = EchoActor.instances

    def handlers(self) -> dict[type, Handler]:
        return {Echo: self._echo, Fail: self._fail}

    async def _echo(self, message: Echo) -> tuple[int, Any]:
        return self.instance, message.value

    async def _fail(self, message: Fail) -> None:
        if message.typed:
            raise QmddError(ErrorCode.NOT_FOUND, "expected failure")
        raise RuntimeError("bug")


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
