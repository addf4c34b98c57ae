"""`qmdd`: run the daemon in the foreground (qmdctl starts it in the background when needed);
`qmdd worker --nats URL`: embed bulk batches for daemons over NATS (qmdd/worker.py)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import trio

from qmdd import __version__, worker
from qmdd.config import load_config
from qmdd.daemon import run_daemon
from qmdd.logs import setup_logging
from qmdd.protocol.errors import ErrorCode, unwrap_error
from qmdd.tracing import setup_otel, shutdown_otel


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        return worker.main(argv[1:])
    parser = argparse.ArgumentParser(prog="qmdd", description="qmdd search daemon (foreground)",
                                     epilog="`qmdd worker --nats URL` embeds for daemons over NATS instead.")
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
        setup_logging(config.log_level, config.log_format, log_file=config.paths.log_file,
                      max_bytes=config.log_max_bytes, backups=config.log_backups)
        setup_otel(os.environ, __version__)
        try:
            trio.run(run_daemon, config)
        finally:
            shutdown_otel()
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
