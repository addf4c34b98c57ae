"""Where qmdd keeps its socket, index, config and models (XDG, or everything under $QMDD_HOME).

Stdlib only: `qmdctl` imports this on its hot path.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from qmdd.protocol import ErrorCode, QmddError

# sun_path is 108 bytes on Linux; keep room for the terminating NUL.
MAX_SOCKET_PATH = 107


@dataclass(frozen=True)
class Paths:
    runtime_dir: Path
    data_dir: Path
    config_file: Path
    cache_dir: Path

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
    def database(self) -> Path:
        return self.data_dir / "index.sqlite"

    @property
    def bm25_snapshot(self) -> Path:
        return self.data_dir / "bm25.snapshot"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "qmdd.log"


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    return Path(value) if value and os.path.isabs(value) else Path.home() / fallback


def resolve_paths(env: dict[str, str] | None = None) -> Paths:
    env = dict(os.environ) if env is None else env
    home = env.get("QMDD_HOME")
    if home:
        root = Path(home).expanduser().absolute()
        return Paths(root / "run", root / "data", root / "config.toml", root / "cache")
    runtime = env.get("XDG_RUNTIME_DIR")
    runtime_dir = Path(runtime) / "qmdd" if runtime else Path(f"/tmp/qmdd-{os.getuid()}")
    return Paths(
        runtime_dir=runtime_dir,
        data_dir=_xdg("XDG_DATA_HOME", ".local/share") / "qmdd",
        config_file=_xdg("XDG_CONFIG_HOME", ".config") / "qmdd" / "config.toml",
        cache_dir=_xdg("XDG_CACHE_HOME", ".cache") / "qmdd",
    )


def ensure_private_dir(path: Path) -> None:
    """Create a 0700 directory we own, refusing one that another user could write to."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise QmddError(ErrorCode.PERMISSION_DENIED, f"{path} is not a directory owned by this user")
    if stat.S_IMODE(st.st_mode) & 0o077:
        path.chmod(0o700)


def check_socket_path(path: Path) -> None:
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise QmddError(ErrorCode.CONFIG_ERROR,
                        f"socket path {path} is longer than {MAX_SOCKET_PATH} bytes",
                        hints=("Set QMDD_HOME or XDG_RUNTIME_DIR to a shorter directory.",))
