"""Where qmdd keeps its socket, index, config and models (XDG, or everything under $QMDD_HOME).

Named indexes (qmd's `--index NAME`; qmdctl passes it on as $QMDD_INDEX) live side by side: each its
own data directory (DATA/indexes/NAME) and socket (qmdd-NAME.sock), so its own daemon and collections.
The default name, "index", keeps the plain paths. The config file and the model cache are shared.

Stdlib only: `qmdctl` imports this on its hot path.
"""

from __future__ import annotations

import os
import stat

from qmdd.protocol.errors import ErrorCode, QmddError

TYPE_CHECKING = False

if TYPE_CHECKING:
    from pathlib import Path

# sun_path is 108 bytes on Linux; keep room for the terminating NUL.
MAX_SOCKET_PATH = 107
DEFAULT_INDEX = "index"
INDEX_NAME_MAX = 64
INDEX_NAME_RULE = (f"an index name is 1-{INDEX_NAME_MAX} letters, digits, '_', '.' or '-', and starts with a "
                   "letter, a digit or '_'")


def listen_address(value: str) -> tuple[str, int]:
    """(host, port) of an http_listen value (the HTTP door's address: the config's and `daemon start
    --http`'s): HOST:PORT, [IPv6]:PORT; port 0 takes a free one. ValueError if it is neither."""
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or int(port) > 65535 or any(c in host for c in "[]/ "):
        raise ValueError(value)
    return host, int(port)


def check_index_name(name: str) -> str:
    """The name, when it is one directory and file name part: no separators, no leading dot or dash
    (`..`, hidden files, options), nothing a socket path or a terminal would mind."""
    if (not name or len(name) > INDEX_NAME_MAX or name[0] in ".-"
            or not all(ch.isalnum() or ch in "_.-" for ch in name) or not name.isprintable()):
        raise QmddError(ErrorCode.CONFIG_ERROR, f"invalid index name {name!r}: {INDEX_NAME_RULE}",
                        hints=("Name it like a collection, e.g. `--index work`.",))
    return name


def index_name(env: dict[str, str]) -> str:
    """The index chosen by $QMDD_INDEX (empty or unset: the default)."""
    return check_index_name(env.get("QMDD_INDEX") or DEFAULT_INDEX)


def _socket_name(index: str) -> str:
    return "qmdd" if index == DEFAULT_INDEX else f"qmdd-{index}"


class Paths:
    __slots__ = ("runtime_dir", "data_dir", "config_file", "cache_dir", "index")

    def __init__(self, runtime_dir: Path, data_dir: Path, config_file: Path, cache_dir: Path,
                 index: str = DEFAULT_INDEX) -> None:
        self.runtime_dir = runtime_dir
        self.data_dir = data_dir
        self.config_file = config_file
        self.cache_dir = cache_dir
        # The index's name: its daemon's runtime files are named after it (data_dir is already its own).
        self.index = index

    @property
    def socket(self) -> Path:
        return self.runtime_dir / f"{_socket_name(self.index)}.sock"

    @property
    def lock_file(self) -> Path:
        return self.runtime_dir / f"{_socket_name(self.index)}.lock"

    @property
    def pid_file(self) -> Path:
        return self.runtime_dir / f"{_socket_name(self.index)}.pid"

    @property
    def index_lock(self) -> Path:
        """Held by the daemon using this index, whatever socket it serves; holds that daemon's pid."""
        return self.data_dir / "qmdd.lock"

    @property
    def address_file(self) -> Path:
        """Where the daemon using this index listens: a client whose environment gives another socket
        path (an MCP client without XDG_RUNTIME_DIR, say) finds it there."""
        return self.data_dir / "qmdd.address"

    @property
    def http_token(self) -> Path:
        """The bearer token every HTTP request but /health must carry (mode 0600, made at first start)."""
        return self.data_dir / "http-token"

    @property
    def http_address(self) -> Path:
        """The URL the daemon's HTTP door listens on, while it does (its port, when 0 was asked for)."""
        return self.data_dir / "qmdd.http"

    @property
    def database(self) -> Path:
        return self.data_dir / "index.sqlite"

    @property
    def bm25_snapshot(self) -> Path:
        return self.data_dir / "bm25.snapshot"

    @property
    def vector_snapshot(self) -> Path:
        return self.data_dir / "vectors.snapshot"

    @property
    def legacy_vector_snapshot(self) -> Path:
        """Where versions before the exact vector index kept their usearch graph: removed at start."""
        return self.data_dir / "vectors.usearch"

    @property
    def imported_models(self) -> Path:
        """Converted models imported by the user: data, since their source folder may go away."""
        return self.data_dir / "models"

    @property
    def plugins(self) -> Path:
        """Installed plugins: NAME.wasm, its record NAME.json and its compiled form NAME.cwasm."""
        return self.data_dir / "plugins"

    @property
    def model_cache(self) -> Path:
        """Converted packaged models: a cache, rebuilt from the installed package when missing."""
        return self.cache_dir / "models"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "qmdd.log"


def _xdg(env: dict[str, str], var: str, fallback: str) -> str:
    value = env.get(var)
    return value if value and os.path.isabs(value) else os.path.join(os.path.expanduser("~"), fallback)


def _roots(env: dict[str, str], index: str) -> tuple[str, str, str, str]:
    """(runtime dir, data dir, config file, cache dir) as strings: os.path only, no pathlib.
    QMDD_CACHE_DIR moves just the cache (converted models), e.g. to share it between test homes."""
    home = env.get("QMDD_HOME")
    cache = env.get("QMDD_CACHE_DIR")
    if home:
        root = os.path.abspath(os.path.expanduser(home))
        runtime, data, config = (os.path.join(root, "run"), os.path.join(root, "data"),
                                 os.path.join(root, "config.toml"))
        cache = cache or os.path.join(root, "cache")
    else:
        xdg_runtime = env.get("XDG_RUNTIME_DIR")
        runtime = os.path.join(xdg_runtime, "qmdd") if xdg_runtime else f"/tmp/qmdd-{os.getuid()}"
        data = os.path.join(_xdg(env, "XDG_DATA_HOME", ".local/share"), "qmdd")
        config = os.path.join(_xdg(env, "XDG_CONFIG_HOME", ".config"), "qmdd", "config.toml")
        cache = cache or os.path.join(_xdg(env, "XDG_CACHE_HOME", ".cache"), "qmdd")
    if index != DEFAULT_INDEX:
        data = os.path.join(data, "indexes", index)
    return runtime, data, config, cache


def socket_path(env: dict[str, str] | None = None) -> str:
    """The daemon socket, computed without pathlib: the hot path of every qmdctl call."""
    env = dict(os.environ) if env is None else env
    index = index_name(env)
    return os.path.join(_roots(env, index)[0], f"{_socket_name(index)}.sock")


def resolve_paths(env: dict[str, str] | None = None) -> Paths:
    from pathlib import Path

    env = dict(os.environ) if env is None else env
    index = index_name(env)
    runtime, data, config, cache = _roots(env, index)
    return Paths(Path(runtime), Path(data), Path(config), Path(cache), index)


def ensure_private_dir(path: Path) -> None:
    """Create a 0700 directory we own, refusing one that another user could write to."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise QmddError(ErrorCode.PERMISSION_DENIED, f"{path} is not a directory owned by this user")
    if stat.S_IMODE(st.st_mode) & 0o077:
        path.chmod(0o700)


def check_socket_path(path: str | Path) -> None:
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise QmddError(ErrorCode.CONFIG_ERROR,
                        f"socket path {path} is longer than {MAX_SOCKET_PATH} bytes",
                        hints=("Set QMDD_HOME or XDG_RUNTIME_DIR to a shorter directory.",))
