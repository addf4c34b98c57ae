"""Where qmdd keeps its socket, index, config and models (XDG, or everything under $QMDD_HOME).

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


class Paths:
    __slots__ = ("runtime_dir", "data_dir", "config_file", "cache_dir")

    def __init__(self, runtime_dir: Path, data_dir: Path, config_file: Path, cache_dir: Path) -> None:
        self.runtime_dir = runtime_dir
        self.data_dir = data_dir
        self.config_file = config_file
        self.cache_dir = cache_dir

    @property
    def socket(self) -> Path:
        return self.runtime_dir / "qmdd.sock"

    @property
    def lock_file(self) -> Path:
        return self.runtime_dir / "qmdd.lock"

    @property
    def pid_file(self) -> Path:
        return self.runtime_dir / "qmdd.pid"

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


def _roots(env: dict[str, str]) -> tuple[str, str, str, str]:
    """(runtime dir, data dir, config file, cache dir) as strings: os.path only, no pathlib.
    QMDD_CACHE_DIR moves just the cache (converted models), e.g. to share it between test homes."""
    home = env.get("QMDD_HOME")
    cache = env.get("QMDD_CACHE_DIR")
    if home:
        root = os.path.abspath(os.path.expanduser(home))
        return (os.path.join(root, "run"), os.path.join(root, "data"), os.path.join(root, "config.toml"),
                cache or os.path.join(root, "cache"))
    runtime = env.get("XDG_RUNTIME_DIR")
    return (os.path.join(runtime, "qmdd") if runtime else f"/tmp/qmdd-{os.getuid()}",
            os.path.join(_xdg(env, "XDG_DATA_HOME", ".local/share"), "qmdd"),
            os.path.join(_xdg(env, "XDG_CONFIG_HOME", ".config"), "qmdd", "config.toml"),
            cache or os.path.join(_xdg(env, "XDG_CACHE_HOME", ".cache"), "qmdd"))


def socket_path(env: dict[str, str] | None = None) -> str:
    """The daemon socket, computed without pathlib: the hot path of every qmdctl call."""
    return os.path.join(_roots(dict(os.environ) if env is None else env)[0], "qmdd.sock")


def resolve_paths(env: dict[str, str] | None = None) -> Paths:
    from pathlib import Path

    runtime, data, config, cache = _roots(dict(os.environ) if env is None else env)
    return Paths(Path(runtime), Path(data), Path(config), Path(cache))


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
