"""SQLite, the source of truth: connections, pragmas and numbered migrations.

One writer (the indexer, always inside explicit transactions) and any number of readers, which WAL
lets proceed while a write is in flight. `synchronous=NORMAL` in WAL mode keeps every committed
transaction across a process kill; only an OS crash can lose the last few, never corrupt.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from qmdd.protocol.errors import ErrorCode, QmddError

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE collections (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE,
        root TEXT NOT NULL,
        masks TEXT NOT NULL,
        excludes TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL
    );
    CREATE TABLE documents (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        collection_id INTEGER NOT NULL REFERENCES collections(id) ON DELETE CASCADE,
        path TEXT NOT NULL,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        hash TEXT NOT NULL,
        title TEXT NOT NULL,
        lines INTEGER NOT NULL,
        indexed_at REAL NOT NULL,
        UNIQUE (collection_id, path)
    );
    CREATE INDEX documents_hash ON documents(hash);
    CREATE TABLE chunks (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        doc_id INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        start_line INTEGER NOT NULL,
        end_line INTEGER NOT NULL,
        heading TEXT NOT NULL,
        text TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    CREATE INDEX chunks_doc ON chunks(doc_id);
    CREATE TABLE contexts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        collection_id INTEGER REFERENCES collections(id) ON DELETE CASCADE,
        prefix TEXT NOT NULL,
        text TEXT NOT NULL,
        UNIQUE (collection_id, prefix)
    );
    CREATE TABLE problems (
        collection_id INTEGER NOT NULL REFERENCES collections(id) ON DELETE CASCADE,
        path TEXT NOT NULL,
        code TEXT NOT NULL,
        message TEXT NOT NULL,
        seen_at REAL NOT NULL,
        PRIMARY KEY (collection_id, path)
    );
    """,
    # Vectors are keyed by the hash of the exact text that was embedded and the model fingerprint:
    # a renamed or copied chunk reuses its vector, a model change never mixes with old vectors.
    """
    CREATE TABLE embeddings (
        hash TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        vector BLOB NOT NULL,
        PRIMARY KEY (hash, fingerprint)
    ) WITHOUT ROWID;
    CREATE INDEX chunks_hash ON chunks(hash);
    """,
    # The collections the user chose to embed (`embed -c X`, or all by a bare `embed`): the background
    # embedder keeps only these embedded. Upgrading, a collection (nearly) all embedded was chosen; one
    # the old background job (which embedded every collection) had only begun was not.
    """
    CREATE TABLE embed_choices (
        collection_id INTEGER PRIMARY KEY REFERENCES collections(id) ON DELETE CASCADE,
        chosen_at REAL NOT NULL
    );
    INSERT INTO embed_choices (collection_id, chosen_at)
        SELECT d.collection_id, (julianday('now') - 2440587.5) * 86400.0
        FROM chunks k JOIN documents d ON d.id = k.doc_id GROUP BY d.collection_id
        HAVING 10 * sum(EXISTS (SELECT 1 FROM embeddings e WHERE e.hash = k.hash)) >= 9 * count(*);
    """,
    # Which directory a collection's root is (st_dev, st_ino), pinned at `collection add`: a root
    # replaced by a symlink or another directory is refused, not followed. Rows from before are
    # pinned by their next scan.
    """
    ALTER TABLE collections ADD COLUMN root_dev INTEGER;
    ALTER TABLE collections ADD COLUMN root_ino INTEGER;
    """,
    # The plugins a collection runs by default (a JSON list of names), and the identities of the
    # transforms its documents were indexed with ('' for none): when they differ from the transforms
    # that apply now, the next scan indexes every file again.
    """
    ALTER TABLE collections ADD COLUMN plugins TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE collections ADD COLUMN transform_key TEXT NOT NULL DEFAULT '';
    """,
    # Each chunk's phrase terms, stored by the indexer for searches to read (see store.chunkterms);
    # NULL until then.
    """
    ALTER TABLE chunks ADD COLUMN phrase BLOB;
    """,
    # The chunking rules its documents were cut by (qmdd.chunking.CHUNK_RULES; '' before): when they
    # differ from this qmdd's, the next scan cuts every document again.
    """
    ALTER TABLE collections ADD COLUMN chunk_rules TEXT NOT NULL DEFAULT '';
    """,
)


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """Open a connection with qmdd's pragmas. Autocommit mode: callers open transactions explicitly."""
    try:
        if readonly:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None,
                                   check_same_thread=False)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute("PRAGMA foreign_keys = ON")
        if not readonly:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA cache_size = -32000")
    except sqlite3.Error as exc:
        raise QmddError(ErrorCode.STORAGE_ERROR, f"cannot open {path}: {exc}") from None
    return conn


def database_file(conn: sqlite3.Connection) -> Path:
    """The file `conn` reads, to open another connection to it."""
    return Path(conn.execute("PRAGMA database_list").fetchone()[2])


def migrate(conn: sqlite3.Connection) -> int:
    """Apply pending migrations; returns the schema version. Refuses a database from the future."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise QmddError(ErrorCode.STORAGE_ERROR,
                        f"index schema v{version} is newer than this qmdd (v{len(MIGRATIONS)})",
                        hints=("Upgrade qmdd, or point QMDD_HOME at a fresh directory.",))
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        with transaction(conn):
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
    return len(MIGRATIONS)


IN_BATCH = 900
"""Values per `IN (...)` list: below 999, the bound-parameter limit of SQLite before 3.32."""


def placeholders(count: int) -> str:
    return ",".join("?" * count)


def heading_path(stored: str) -> tuple[str, ...]:
    """A chunk's `heading` column as the heading path it was written from (joined by \\x1f)."""
    return tuple(stored.split("\x1f")) if stored else ()


def select_in(conn: sqlite3.Connection, sql: str, values: Sequence[Any], before: Sequence[Any] = ()
              ) -> Iterator[Any]:
    """The rows of `sql` for all of `values`, however many: one statement per batch of `IN_BATCH`
    values, with `{in}` in `sql` replaced by that batch's placeholders, bound after `before`."""
    for start in range(0, len(values), IN_BATCH):
        part = values[start:start + IN_BATCH]
        yield from conn.execute(sql.replace("{in}", placeholders(len(part))), (*before, *part))


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE … COMMIT, rolled back on any exception (including cancellation).

    SQLite's own failures (disk full, database locked past the busy timeout, I/O errors) become
    STORAGE_ERROR: a typed answer for the caller, not a crash of the actor that owns the writer."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    except sqlite3.Error as exc:
        raise QmddError(ErrorCode.STORAGE_ERROR, f"database write failed: {exc}") from exc


def open_database(path: Path) -> sqlite3.Connection:
    conn = connect(path)
    try:
        migrate(conn)
        check = conn.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise QmddError(ErrorCode.STORAGE_ERROR, f"{path} is damaged: {exc}",
                        hints=("Move the file away and run `qmdctl update` to rebuild the index.",)) from None
    if check != "ok":
        conn.close()
        raise QmddError(ErrorCode.STORAGE_ERROR, f"{path} failed its integrity check: {check}")
    return conn


def database_id(conn: sqlite3.Connection) -> str:
    """A random id born with the database: a snapshot made from another database never loads."""
    with transaction(conn):
        conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('database_id', ?)", (uuid.uuid4().hex,))
    return str(stored_database_id(conn))


def stored_database_id(conn: sqlite3.Connection) -> str | None:
    """The database id if one was born yet; never writes (for read-only connections)."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'database_id'").fetchone()
    return None if row is None else str(row[0])


def compact(conn: sqlite3.Connection) -> None:
    """Rewrite the database without its free pages, then copy the WAL into it and truncate the WAL.

    VACUUM needs room for a whole copy of the database: on a full disk it fails, as STORAGE_ERROR."""
    try:
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.Error as exc:
        raise QmddError(ErrorCode.STORAGE_ERROR, f"compacting the database failed: {exc}") from exc
