"""Restart policy for actors: exponential backoff, a restart budget per time window, health.

A crashing actor is rebuilt from its factory and resumes on the same inbox. An actor that crashes more
than `max_restarts` times within `window_s` is given up on: the daemon reports itself degraded, and
every message still sent to that actor is answered with BACKEND_UNAVAILABLE, so no caller hangs, and
`degraded_reason` says which actor and why. Crash times are read from trio's clock (tests run the
policy in virtual time).
"""

from __future__ import annotations

import logging
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import outcome
import trio

from qmdd.actors.base import Actor, Envelope, Mailbox, send_reply
from qmdd.protocol.errors import ErrorCode, QmddError

log = logging.getLogger("qmdd.supervisor")


@dataclass
class RestartPolicy:
    max_restarts: int = 5
    window_s: float = 60.0
    backoff_initial_s: float = 0.05
    backoff_max_s: float = 5.0


@dataclass
class ActorHealth:
    name: str
    mailbox: Mailbox
    factory: Callable[[], Actor]
    status: str = "starting"  # starting | running | restarting | failed | stopped
    restarts: int = 0
    last_crash: str | None = None
    crash_times: deque[float] = field(default_factory=deque)
    failed_reason: str | None = None  # set when given up on
    actor: Actor | None = None
    ended: trio.Event = field(default_factory=trio.Event)


def describe_crash(exc: BaseException) -> str:
    """One line naming the real failure, looking through the nursery groups that wrap it."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return "".join(traceback.format_exception_only(exc)).strip()[-500:]


class Supervisor:
    def __init__(self, nursery: trio.Nursery, policy: RestartPolicy | None = None) -> None:
        self._nursery = nursery
        self.policy = policy or RestartPolicy()
        self.children: dict[str, ActorHealth] = {}

    async def start_actor(self, mailbox: Mailbox, factory: Callable[[], Actor]) -> None:
        """Returns once the actor's first instance is ready (or has failed its first start)."""
        health = ActorHealth(mailbox.name, mailbox, factory)
        self.children[mailbox.name] = health
        await self._nursery.start(self._supervise, health)

    async def wait_ended(self) -> None:
        """Until every supervised actor has stopped or been given up on."""
        for health in self.children.values():
            await health.ended.wait()

    @property
    def degraded(self) -> bool:
        return any(h.status == "failed" for h in self.children.values())

    @property
    def degraded_reason(self) -> str | None:
        """Which actors were given up on and why, in one line; None while every actor is up."""
        reasons = [f"{h.name}: {h.failed_reason}" for h in self.children.values()
                   if h.status == "failed" and h.failed_reason]
        return "; ".join(reasons) or None

    def statistics(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, h in self.children.items():
            try:  # the last instance of a failed actor is torn down: its numbers must not fail `status`
                stats = h.actor.statistics() if h.actor is not None else {}
            except Exception as exc:
                stats = {"statistics_error": f"{type(exc).__name__}: {exc}"}
            out[name] = {"status": h.status, "restarts": h.restarts, "queue_depth": h.mailbox.queue_depth(),
                         "last_crash": h.last_crash, **stats}
        return out

    async def _supervise(self, health: ActorHealth, task_status: trio.TaskStatus[None]) -> None:
        try:
            await self._restart_loop(health, task_status)
        finally:
            health.ended.set()

    async def _restart_loop(self, health: ActorHealth, task_status: trio.TaskStatus[None]) -> None:
        reported = False
        while True:
            health.actor = actor = health.factory()
            try:
                async with trio.open_nursery() as inner:
                    await inner.start(actor.run, health.mailbox)
                    health.status = "running"
                    if not reported:
                        reported = True
                        task_status.started()
                health.status = "stopped"
                return
            except Exception as exc:  # the supervisor is where crashes end up; Cancelled passes through
                health.last_crash = describe_crash(exc)
                log.error("actor %s crashed: %s", health.name, health.last_crash,
                          exc_info=log.isEnabledFor(logging.DEBUG))
            if not reported:
                reported = True
                task_status.started()
            now = trio.current_time()
            health.crash_times.append(now)
            while health.crash_times and now - health.crash_times[0] > self.policy.window_s:
                health.crash_times.popleft()
            crashes = len(health.crash_times)
            if crashes > self.policy.max_restarts:
                health.status = "failed"
                health.failed_reason = (f"crashed {crashes} times in {self.policy.window_s:.0f}s, given up; "
                                        f"last crash: {health.last_crash}")
                log.error("actor %s crashed %d times in %.0fs; giving up (daemon degraded)",
                          health.name, crashes, self.policy.window_s)
                await self._answer_dead_letters(health)
                return
            health.status = "restarting"
            health.restarts += 1
            # Doubling with each crash still in the window: after a quiet spell, back to the initial delay.
            backoff = self.policy.backoff_initial_s * 2 ** min(crashes - 1, 30)
            await trio.sleep(min(backoff, self.policy.backoff_max_s))

    async def _answer_dead_letters(self, health: ActorHealth) -> None:
        """Until the daemon closes the mailbox (at shutdown): answer each message at once, log nothing."""
        async def answer(channel: trio.MemoryReceiveChannel[Envelope]) -> None:
            async for envelope in channel:
                send_reply(envelope, outcome.Error(QmddError(
                    ErrorCode.BACKEND_UNAVAILABLE,
                    f"the {health.name} actor is down after repeated crashes: {health.last_crash}",
                    hints=("Restart the daemon with `qmdctl daemon stop`; the daemon log has the cause.",))))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(answer, health.mailbox.receive_channel)
            nursery.start_soon(answer, health.mailbox.beside_receive)
