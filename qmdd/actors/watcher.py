"""Watcher actor: inotify (through watchfiles) over every collection root.

Per collection, one task follows the notifier and gathers changed paths, and another hands them to the
indexer: whatever arrives while the indexer is busy goes with the next call, so a `git checkout` of
thousands of files becomes a few `IndexPaths` messages, not thousands. A root that vanishes (unmounted
disk, deleted folder) is reported as `missing`, looked for every `poll_s`, and rescanned when it comes
back; a root that a symlink or another directory took the place of is `refused`, never followed (its
identity is pinned at `collection add`); a root the notifier cannot watch (inotify limits) is rescanned
every `15 * poll_s` instead. Each time a notifier is in place (daemon start, watcher restart, a
collection added, a root back) the collection is rescanned once (mtime+size: a stat per file), so
nothing that changed before it was watching is missed. After a quiet spell the indexer is asked to
save the derived snapshots.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import stat
import threading
import time
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import outcome
import trio
import watchfiles
from watchfiles import Change

from qmdd import faults
from qmdd.actors.base import CatchUp, DatabaseActor, Handler, Mailbox, typed_outcome
from qmdd.actors.messages import ChunksIndexed, IndexPaths, SaveSnapshot, SyncWatches, WatchStatus
from qmdd.protocol.errors import ErrorCode, QmddError
from qmdd.store import documents as docs
from qmdd.walk import VENDOR_DIRS

log = logging.getLogger("qmdd.watcher")

STEP_MS = 50
"""A change is handed on after this much quiet (or `debounce_ms` after the first change, at most)."""
ROOT_CHECK_MS = 250
"""The notifier returns at least this often: its first return says it is in place (the catch-up rescan
waits for it, and should not land seconds after an add), each one checks the root is still there (a
stop sets its event instead). A wake-up costs a stat in the notifier's thread, no trip to trio's."""
BURST_PATHS = 256
"""A batch this large is probably a checkout or a copy in progress: wait for it to settle first."""
BURST_SETTLE_S = 0.3
BURST_MAX_WAIT_S = 5.0
FULL_SCAN_PATHS = 2000
"""Above this many changed paths a rescan (a stat per file) is cheaper than path-by-path updates."""
CHECKPOINT_S = 5.0
"""Snapshots are saved this long after the last change (SQLite has it all already)."""
_KINDS = {Change.added.value: "added", Change.modified.value: "modified", Change.deleted.value: "deleted"}
# watchfiles logs a line per batch at INFO; ours, after indexing it, says more.
logging.getLogger("watchfiles.main").setLevel(logging.WARNING)

RootKey = tuple[int, int]


def root_key(root: str) -> RootKey | None:
    """(device, inode) of what is at the root's path, or None when nothing (or a plain file) is: a root
    replaced by another directory must be watched afresh, if at all. A symlink there is not followed:
    its own identity is never the pinned directory's."""
    try:
        st = os.lstat(root)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode) else None


def relative_changes(root: str, raw: AbstractSet[tuple[int, str]], skip: tuple[str, ...] = ()) -> dict[str, int]:
    """The notifier's absolute paths as relpaths (last kind wins), without the walk's vendor dirs
    (.git churns through thousands of files during a checkout, and is never indexed) and without
    the `skip` directories (the daemon's own: its index may live inside a watched tree)."""
    prefix = root.rstrip("/") + "/"
    skipped = tuple(d.rstrip("/") + "/" for d in skip)
    changes: dict[str, int] = {}
    for kind, path in sorted(raw, key=lambda c: c[1]):
        if not path.startswith(prefix) or path.startswith(skipped):
            continue
        relpath = path[len(prefix):]
        if not VENDOR_DIRS.isdisjoint(relpath.split("/")):
            continue
        changes[relpath] = kind
    return changes


@dataclass
class CollectionWatch:
    collection_id: int
    name: str
    root: str
    pin: RootKey | None = None  # the root's identity recorded at `collection add` (None: not yet)
    state: str = "starting"  # starting | watching | missing | refused | polling | stopped
    since: float = field(default_factory=time.time)
    last_change: dict[str, Any] | None = None
    last_error: str | None = None
    events: int = 0
    batches: int = 0
    rescans: int = 0
    pending: dict[str, int] = field(default_factory=dict)
    pending_full: bool = False
    last_event_at: float = 0.0
    unsaved: bool = False
    wake: trio.Event = field(default_factory=trio.Event)
    cancel_scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    def set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.since = time.time()

    def request(self, changes: dict[str, int] | None) -> None:
        """Queue changed paths (None: a full rescan) for the dispatcher."""
        if changes is None:
            self.pending_full = True
        else:
            self.pending.update(changes)
            self.last_event_at = time.monotonic()
        self.wake.set()

    def to_wire(self) -> dict[str, Any]:
        return {"state": self.state, "since": self.since, "root": self.root, "last_change": self.last_change,
                "last_error": self.last_error, "events": self.events, "batches": self.batches,
                "rescans": self.rescans, "pending": len(self.pending) + int(self.pending_full)}


class WatcherActor(DatabaseActor):
    name = "watcher"

    def __init__(self, database: Path, indexer: Mailbox, *, enabled: bool, debounce_ms: int, poll_s: float,
                 embed_jobs: Mailbox | None = None, own_dirs: tuple[Path, ...] = (),
                 catch_up: CatchUp | None = None) -> None:
        super().__init__(database)
        # Told which collections' start-up rescans are still to finish (searches wait for them).
        self._catch_up = catch_up
        self._indexer = indexer
        self._enabled = enabled
        self._debounce_ms = max(debounce_ms, STEP_MS)
        self._poll_s = poll_s
        # Told the id of each collection that got new chunks (embedded in the background, if chosen).
        self._embed_jobs = embed_jobs
        self._own_dirs = tuple(os.path.realpath(d) for d in own_dirs)
        self._watches: dict[int, CollectionWatch] = {}
        # Each followed root holds a thread for as long as it is watched: not from trio's default
        # pool, which the rest of the daemon shares.
        self._threads = trio.CapacityLimiter(math.inf)

    def handlers(self) -> dict[type, Handler]:
        return {SyncWatches: self._sync, WatchStatus: self._status}

    def extra_statistics(self) -> dict[str, Any]:
        states = [w.state for w in self._watches.values()]
        return {"enabled": self._enabled, "watching": states.count("watching"), "missing": states.count("missing"),
                "polling": states.count("polling"),
                "events": sum(w.events for w in self._watches.values()),
                "batches": sum(w.batches for w in self._watches.values())}

    async def setup(self) -> None:
        await super().setup()
        await self._sync(SyncWatches())
        for watch in self._watches.values():  # at daemon start (or a restart): each is rescanned first
            self._caught_up(watch, False)

    async def _sync(self, message: SyncWatches) -> dict[str, Any]:
        if not self._enabled:
            return {"enabled": False}
        wanted = {c.id: c for c in docs.list_collections(self.conn)}
        for collection_id, watch in list(self._watches.items()):
            row = wanted.get(collection_id)
            if row is None or row.root != watch.root:
                watch.cancel_scope.cancel()
                del self._watches[collection_id]
            else:
                watch.name = row.name  # a rename keeps the watch
        for collection_id, row in wanted.items():
            if collection_id not in self._watches:
                watch = CollectionWatch(collection_id, row.name, row.root, row.root_key)
                self._watches[collection_id] = watch
                self.nursery.start_soon(self._run_watch, watch)
        return {"enabled": True, "collections": len(self._watches)}

    async def _status(self, message: WatchStatus) -> dict[str, Any]:
        return {"enabled": self._enabled, "collections": {w.name: w.to_wire() for w in self._watches.values()}}

    async def _run_watch(self, watch: CollectionWatch) -> None:
        try:
            with watch.cancel_scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._dispatch_changes, watch)
                    await self._follow_root(watch)
            watch.set_state("stopped")
        finally:
            self._caught_up(watch)

    def _caught_up(self, watch: CollectionWatch, done: bool = True) -> None:
        """Its start-up rescan is done (or will not come: the root is away), or (done=False) to come."""
        if self._catch_up is not None:
            if done:
                self._catch_up.done(watch.collection_id)
            else:
                self._catch_up.begin(watch.collection_id, watch.name)

    # --- following a root ---------------------------------------------------------------------

    async def _follow_root(self, watch: CollectionWatch) -> None:
        while True:
            key = root_key(watch.root)
            if key is None:
                if watch.state != "missing":
                    log.warning("collection %s: root %s is missing; waiting for it to come back",
                                watch.name, watch.root)
                    watch.set_state("missing")
                    self._caught_up(watch)  # nothing to catch up with: searches are not held for it
                await trio.sleep(self._poll_s)
                continue
            refusal = self._refusal(watch, key)
            if refusal is not None:
                if watch.state != "refused":
                    log.warning("collection %s: root %s refused (%s); not watched until it is back or the "
                                "collection is added again", watch.name, watch.root, refusal)
                    watch.last_error = f"root refused: {refusal}; re-add the collection if the new folder is meant"
                    watch.set_state("refused")
                    self._caught_up(watch)
                await trio.sleep(self._poll_s)
                continue
            if watch.state in ("missing", "refused"):
                log.info("collection %s: root %s is back; rescanning", watch.name, watch.root)
            followed = await outcome.acapture(self._follow, watch, key)
            if isinstance(followed, outcome.Error):
                if not isinstance(followed.error, OSError):
                    followed.unwrap()
                await self._poll_instead(watch, followed.error)

    def _refusal(self, watch: CollectionWatch, key: RootKey) -> str | None:
        """Why what stands at the root's path is not the collection's root (None: it is). Following it
        would index, and serve, whatever a symlink or a directory put in its place leads to."""
        if watch.pin is None:  # a collection from before pinning: its first scan pins it
            row = docs.collection_by_id(self.conn, watch.collection_id)
            watch.pin = row.root_key if row is not None else None
        if watch.pin is None:
            return "a symlink took its place" if os.path.islink(watch.root) else None
        return None if key == watch.pin else "a symlink or another directory took its place"

    async def _follow(self, watch: CollectionWatch, key: RootKey) -> None:
        """Until the root vanishes or is replaced; an OSError when it cannot be watched. Cancellation sets
        the stop event at once, so the notifier's thread returns within one step instead of at its timeout."""
        stop = threading.Event()
        in_place = False

        def take(changes: set[tuple[Change, str]]) -> None:  # in trio's thread, for each batch
            nonlocal in_place
            if not in_place:
                in_place = True
                watch.set_state("watching")
                # Whatever changed before the notifier was in place (the daemon was down, the root was
                # away, the collection is being added) is found by a rescan: a stat per file.
                watch.request(None)
            self._note(watch, changes)

        follow = partial(follow_root, watch.root, key, self._debounce_ms, stop, take)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_set_when_cancelled, stop)
            # Captured here, raised after the nursery: an OSError must reach the caller as itself.
            followed = await outcome.acapture(partial(trio.to_thread.run_sync, follow, limiter=self._threads))
            nursery.cancel_scope.cancel()
        if followed.unwrap():
            log.warning("collection %s: root %s vanished or was replaced", watch.name, watch.root)
            watch.set_state("missing")

    async def _poll_instead(self, watch: CollectionWatch, error: BaseException) -> None:
        """No notifier (e.g. the inotify watch limit): rescan every so often until one can be had."""
        if watch.state != "polling":
            log.warning("collection %s: cannot watch %s (%s); rescanning every %.0fs instead",
                        watch.name, watch.root, error, 15 * self._poll_s)
            watch.last_error = str(error)
            watch.set_state("polling")
        watch.request(None)  # first, so that a start-up rescan is not 15 polls late
        await trio.sleep(15 * self._poll_s)

    def _note(self, watch: CollectionWatch, raw: AbstractSet[tuple[int, str]]) -> None:
        changes = relative_changes(watch.root, raw, self._own_dirs)
        if not changes:
            return
        watch.events += len(changes)
        relpath, kind = next(reversed(changes.items()))
        watch.last_change = {"path": relpath, "kind": _KINDS.get(kind, str(kind)), "at": time.time()}
        watch.request(changes)

    # --- handing changes to the indexer -------------------------------------------------------

    async def _dispatch_changes(self, watch: CollectionWatch) -> None:
        while True:
            with trio.move_on_after(CHECKPOINT_S if watch.unsaved else math.inf):
                await watch.wake.wait()
            if not watch.wake.is_set():
                await self._save_snapshots(watch)
                continue
            await self._settle(watch)
            watch.wake = trio.Event()
            full = watch.pending_full or len(watch.pending) > FULL_SCAN_PATHS
            changes, watch.pending, watch.pending_full = watch.pending, {}, False
            if full:
                await faults.pause("watcher.rescan")
            await self._index(watch, changes, full)
            if full:
                self._caught_up(watch)

    async def _settle(self, watch: CollectionWatch) -> None:
        """Let a burst (checkout, copy, unpack) finish, so it goes to the indexer as one batch."""
        deadline = time.monotonic() + BURST_MAX_WAIT_S
        while len(watch.pending) >= BURST_PATHS and time.monotonic() < deadline:
            quiet_for = time.monotonic() - watch.last_event_at
            if quiet_for >= BURST_SETTLE_S:
                return
            await trio.sleep(BURST_SETTLE_S - quiet_for)

    async def _index(self, watch: CollectionWatch, changes: dict[str, int], full: bool) -> None:
        result = await typed_outcome(self._indexer.call, IndexPaths(watch.collection_id, changes, full))
        if isinstance(result, outcome.Error):
            error = result.error
            assert isinstance(error, QmddError)
            # The root went away mid-update: following it notices and rescans when it is back.
            watch.last_error = f"{error.code}: {error.message}"
            if error.code not in (ErrorCode.PATH_NOT_FOUND, ErrorCode.BACKEND_UNAVAILABLE):
                log.warning("collection %s: indexing changes failed: %s", watch.name, watch.last_error)
            if error.code == ErrorCode.BACKEND_UNAVAILABLE:
                watch.request(None)  # the indexer restarted: look again, after the backoff
                await trio.sleep(self._poll_s)
            return
        summary = result.unwrap()
        if summary is None:
            return
        watch.batches += 1
        watch.rescans += int(full)
        if watch.state != "polling":  # where it is, the error says why
            watch.last_error = None
        if summary["indexed"] or summary["removed"]:
            watch.unsaved = True
            log.info("collection %s: %s %d, removed %d in %.3fs", watch.name,
                     "rescanned, indexed" if full else "indexed", summary["indexed"], summary["removed"],
                     summary["seconds"])
        if summary["chunks_added"] and self._embed_jobs is not None:
            # A wake-up, not a queue: when the actor is far behind, one already waiting covers this batch.
            with contextlib.suppress(QmddError):
                self._embed_jobs.cast_nowait(ChunksIndexed(watch.collection_id))

    async def _save_snapshots(self, watch: CollectionWatch) -> None:
        watch.unsaved = False
        await typed_outcome(self._indexer.call, SaveSnapshot())  # failing, it is tried after the next change


def follow_root(root: str, key: RootKey, debounce_ms: int, stop: threading.Event,
                take: Callable[[set[tuple[Change, str]]], None]) -> bool:
    """Follow `root` in this (dedicated) thread until `stop` is set (False) or the root vanishes or is
    replaced (True). `take` runs in trio's thread with each batch of (kind, absolute path) changes, the
    first (perhaps empty, within ROOT_CHECK_MS) saying the notifier is in place.
    Raises OSError when the root cannot be watched (e.g. the inotify watch limit)."""
    if faults.enabled:
        faults.check_os_error("watcher.notifier")
    batches = watchfiles.watch(root, watch_filter=None, debounce=debounce_ms, step=STEP_MS, stop_event=stop,
                               rust_timeout=ROOT_CHECK_MS, yield_on_timeout=True, debug=False,
                               raise_interrupt=False, force_polling=False, recursive=True,
                               ignore_permission_denied=True)
    in_place = False
    with contextlib.closing(batches):  # closes the notifier here, not whenever the generator is collected
        for changes in batches:
            if changes or not in_place:  # a timeout's empty batch only checks the root, here
                in_place = True
                trio.from_thread.run_sync(take, changes)
            if root_key(root) != key:
                return True
    return False


async def _set_when_cancelled(stop: threading.Event) -> None:
    try:
        await trio.sleep_forever()
    finally:
        stop.set()
