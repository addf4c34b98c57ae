"""`qmdd`: run the daemon in the foreground (qmdctl starts it in the background when needed)."""

from __future__ import annotations

import argparse
import logging
import sys

import trio

from qmdd import __version__
from qmdd.config import load_config
from qmdd.daemon import run_daemon
from qmdd.methods.call import trace_id_var
from qmdd.protocol.errors import ErrorCode, unwrap_error
from qmdd.transports import systemd


class _TraceFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.trace_id = trace_id_var.get()
        return True


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_TraceFilter())
    handler.setFormatter(systemd.JournalFormatter() if systemd.stderr_is_journal() else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(trace_id)s] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qmdd", description="qmdd search daemon (foreground)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default=None)
    parser.add_argument("--no-watch", action="store_true",
                        help="do not watch collection roots (index changes with `qmdctl update`)")
    parser.add_argument("--http", metavar="HOST:PORT", default=None,
                        help="also serve the REST API over HTTP here, e.g. 127.0.0.1:8181 (bearer token needed)")
    parser.add_argument("--version", action="version", version=f"qmdd {__version__}")
    args = parser.parse_args(argv)
    try:
        config = load_config({"log_level": args.log_level, "watch": False if args.no_watch else None,
                              "http_listen": args.http})
        setup_logging(config.log_level)
        trio.run(run_daemon, config)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # main is the last of the three places allowed to catch: report, exit non-zero
        error = unwrap_error(exc)
        if error is None:
            logging.getLogger("qmdd").exception("daemon crashed")
            return ErrorCode.INTERNAL.spec.exit_code
        sys.stderr.write(f"qmdd: {error.code}: {error.message}\n")
        for hint in error.hints:
            sys.stderr.write(f"  hint: {hint}\n")
        return error.code.spec.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
