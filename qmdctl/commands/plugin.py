"""`qmdctl plugin install|list|info|remove|enable|disable|attach|detach`."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from qmdctl.commands.admin import print_summaries, progress_reporter
from qmdd.protocol.errors import ErrorCode, QmddError

if TYPE_CHECKING:
    from qmdctl.invocation import Invocation
    from qmdctl.render import Output

MAX_MODULE_BYTES = 16 << 20
"""Larger than any plugin needs; well inside a request frame."""


def _read(path: str, what: str) -> bytes:
    """The file's bytes, read by this user (the daemon never opens a path given to it for a plugin)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_MODULE_BYTES + 1)
    except FileNotFoundError:
        raise QmddError(ErrorCode.PATH_NOT_FOUND, f"no {what} at {path}") from None
    except OSError as exc:
        raise QmddError(ErrorCode.FILE_UNREADABLE, f"cannot read the {what} {path}: {exc.strerror}") from None
    if len(data) > MAX_MODULE_BYTES:
        raise QmddError(ErrorCode.INVALID_INPUT, f"{path} is over {MAX_MODULE_BYTES >> 20} MiB: not a plugin")
    return data


def install(inv: Invocation) -> int:
    args = inv.args
    path = os.path.expanduser(args["path"])
    module = _read(path, "plugin module")
    manifest_path = os.path.expanduser(args["manifest"]) if args["manifest"] else os.path.splitext(path)[0] + ".toml"
    manifest = None
    if args["manifest"] or os.path.exists(manifest_path):
        raw = _read(manifest_path, "manifest")
        try:
            manifest = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise QmddError(ErrorCode.INVALID_INPUT, f"the manifest {manifest_path} is not UTF-8 text") from None
    on_item, close = progress_reporter(inv.output)
    try:
        installed = inv.client.call("plugin.install", {
            "module": module, "source": os.path.basename(path), "name": args["name"], "manifest": manifest,
            "default_name": os.path.splitext(os.path.basename(path))[0], "replace": args["replace"]}, on_item)
    finally:
        close()
    inv.output.value(installed, lambda p: _describe(inv.output, p, "installed"))
    return 0


def list_(inv: Invocation) -> int:
    plugins: list[dict[str, Any]] = inv.client.call("plugin.list")
    out = inv.output
    if out.fmt == "text":
        if not plugins:
            out.line("No plugins. Install one with: qmdctl plugin install plugins/path-boost.wat")
        for p in plugins:
            out.line(_summary(out, p))
    else:
        out.table(plugins, ["name", "version", "hooks", "enabled", "collections", "calls", "failures",
                            "disabled_reason"])
    return 0


def info(inv: Invocation) -> int:
    plugin = inv.client.call("plugin.info", {"name": inv.args["name"]})
    inv.output.value(plugin, lambda p: _describe(inv.output, p, None))
    return 0


def remove(inv: Invocation) -> int:
    return _change(inv, "plugin.remove", {"name": inv.args["name"]}, "removed")


def enable(inv: Invocation) -> int:
    return _change(inv, "plugin.enable", {"name": inv.args["name"]}, "enabled")


def disable(inv: Invocation) -> int:
    return _change(inv, "plugin.disable", {"name": inv.args["name"]}, "disabled")


def attach(inv: Invocation) -> int:
    return _attach(inv, "plugin.attach", "now runs on")


def detach(inv: Invocation) -> int:
    return _attach(inv, "plugin.detach", "no longer runs on")


def _attach(inv: Invocation, method: str, verb: str) -> int:
    if not inv.args["collection"]:
        raise QmddError(ErrorCode.INVALID_INPUT, f"usage: qmdctl {method.replace('.', ' ')} NAME -c COLLECTION")
    return _change(inv, method, {"name": inv.args["name"], "collection": inv.args["collection"]},
                   f"{verb} {inv.args['collection']}")


def _change(inv: Invocation, method: str, params: dict[str, Any], done: str) -> int:
    on_item, close = progress_reporter(inv.output)
    try:
        answer = inv.client.call(method, params, on_item)
    finally:
        close()
    out = inv.output

    def text(a: dict[str, Any]) -> None:
        out.line(f"{out.style(params['name'], 'cyan')} {done}")
        if a.get("rescanned"):
            out.line("indexed again through its transforms:")
            print_summaries(out, a["rescanned"])

    out.value(answer, text)
    return 0


def _summary(out: Output, p: dict[str, Any]) -> str:
    state = "enabled" if p["enabled"] else out.style(f"disabled: {p['disabled_reason']}", "yellow")
    where = f"  on {', '.join(p['collections'])}" if p.get("collections") else ""
    return (f"{out.style(p['name'], 'cyan')} {p['version']}  {'+'.join(p['hooks'])}  {state}{where}  "
            f"{p['calls']} calls, {p['failures']} failed")


def _describe(out: Output, p: dict[str, Any], done: str | None) -> None:
    out.line(_summary(out, p) + (f"  ({done})" if done else ""))
    if p["description"]:
        out.line(f"  {p['description']}")
    out.line(f"  limits: {p['fuel']:,} fuel, {p['memory_mb']} MB, {p['time_ms']} ms per call; {p['bytes']:,} bytes; "
             f"sha256 {p['sha256'][:16]}")
    if p["calls"]:
        out.line(f"  used: {p['fuel_used']:,} fuel, {p['seconds'] * 1000:.1f} ms in all")
    if p["last_error"]:
        out.line(out.style(f"  last failure: {p['last_error']}", "yellow"))
    if p.get("rescanned"):
        print_summaries(out, p["rescanned"])
