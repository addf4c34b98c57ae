"""Every qmdctl command, declared once as data (plain slotted classes: dataclasses and NamedTuple cost
import time on the hot path).

Two front ends are built from this table: `qmdctl.fastargs` for every command (a search must not pay
~80 ms for importing typer, nor several for argparse) and the typer app (`qmdctl.app`) for `--help`.
The same table gives each command's JSON Schema for agents (`--emit-spec`, see `qmdctl.emitspec`).
Stdlib only.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~10 ms on the hot path
if TYPE_CHECKING:
    from typing import Any, Literal

    Kind = Literal["str", "int", "float", "flag", "list"]
# "cli" is qmd's name for text; xml is qmd's too. Text (qmd's default) unless asked otherwise.
FORMATS = ("text", "cli", "json", "ndjson", "csv", "md", "xml", "files")


class Opt:
    __slots__ = ("name", "flags", "kind", "default", "help", "nargs", "low", "high")

    def __init__(self, name: str, flags: tuple[str, ...] = (), kind: Kind = "str", default: Any = None,
                 help: str = "", nargs: str | None = None, *, low: float | None = None,
                 high: float | None = None) -> None:
        self.name = name
        # Empty for a positional argument.
        self.flags = flags
        self.kind = kind
        self.default = default
        self.help = help
        # Positional only: None (exactly one), '?' (optional), '+' (one or more, joined or listed).
        self.nargs = nargs
        # Bounds of an int or float value, both inclusive: outside them is a usage error.
        self.low = low
        self.high = high


class Command:
    __slots__ = ("path", "help", "runner", "opts", "aliases", "output", "effect")

    def __init__(self, path: tuple[str, ...], help: str, runner: str, opts: tuple[Opt, ...] = (),
                 aliases: tuple[str, ...] = (), output: bool = True, effect: str | None = None) -> None:
        self.path = path
        self.help = help
        # 'module:function' under qmdctl.commands, imported only when the command runs.
        self.runner = runner
        self.opts = opts
        self.aliases = aliases
        # Takes the shared --format/--json/... output options.
        self.output = output
        # What --dry-run reports for a command that does more than send one RPC (None: the runner's RPC,
        # or a plan the runner raises itself as DryRun).
        self.effect = effect

    @property
    def name(self) -> str:
        """'collection add'."""
        return " ".join(self.path)

    @property
    def slug(self) -> str:
        """'collection-add': the name of its spec file (qmdd/protocol/schemas/, tests/fixtures/anel/)."""
        return "-".join(self.path)

    def all_opts(self) -> tuple[Opt, ...]:
        """Its own options, then the output options (if it takes them), then the agent options."""
        return (*self.opts, *(OUTPUT_OPTS if self.output else ()), *AGENT_OPTS)


OUTPUT_OPTS: tuple[Opt, ...] = (
    Opt("format", ("--format",), "str", None, f"Output format: {', '.join(FORMATS)} (env AGENT_OUTPUT_FORMAT)."),
    Opt("output_format", ("--output-format",), "str", None,
        "ANEL's name for --format (same values); --format wins when both are given."),
    Opt("json", ("--json",), "flag", False, "Shorthand for --format json."),
    Opt("ndjson", ("--ndjson",), "flag", False, "Shorthand for --format ndjson."),
    Opt("csv", ("--csv",), "flag", False, "Shorthand for --format csv."),
    Opt("md", ("--md",), "flag", False, "Shorthand for --format md."),
    Opt("xml", ("--xml",), "flag", False, "Shorthand for --format xml."),
    Opt("files", ("--files",), "flag", False, "Shorthand for --format files."),
)

# Every command takes these (env equivalents AGENT_EMIT_SPEC=1 / AGENT_DRY_RUN=1); neither contacts the daemon.
AGENT_OPTS: tuple[Opt, ...] = (
    Opt("emit_spec", ("--emit-spec",), "flag", False,
        "Print this command's JSON Schema (input, output, error codes) and exit (env AGENT_EMIT_SPEC=1)."),
    Opt("dry_run", ("--dry-run",), "flag", False,
        "Validate the input and print the request it would send, changing nothing and starting no daemon; a "
        "running daemon checks a change against the index (env AGENT_DRY_RUN=1)."),
)

_COLLECTION_FILTER = Opt("collection", ("-c", "--collection"), "list", None,
                         "Restrict to this collection (repeatable).")

_RESULT_OPTS: tuple[Opt, ...] = (
    Opt("limit", ("-n", "--limit"), "int", None, "Number of results (default 5; 20 for json/files).", low=1,
        high=100_000),
    _COLLECTION_FILTER,
    Opt("path", ("--path",), "str", None, "Only documents inside this folder of the collection (whole folder "
        "names: `pages` is not `pages.ru`)."),
    Opt("min_score", ("--min-score",), "float", 0.0, "Drop results scoring below this (0-1).", low=0.0, high=1.0),
    Opt("all", ("--all",), "flag", False, "Return every match (up to 100000)."),
    Opt("full", ("--full",), "flag", False, "Print whole documents instead of snippets."),
    Opt("line_numbers", ("--line-numbers",), "flag", False, "Number the snippet lines."),
    Opt("explain", ("--explain",), "flag", False, "Show how each score was made."),
    Opt("no_collapse", ("--no-collapse",), "flag", False,
        "List every copy of a page (identical files, translations under pages.de/ and the like) as its own "
        "hit; by default the best copy stands for them and lists the others."),
    Opt("full_path", ("--full-path",), "flag", False,
        "Show on-disk paths (./-prefixed under the working directory) instead of qmd:// URIs and docids."),
    Opt("plugin", ("--plugin",), "list", None,
        "Run this installed scorer or filter plugin on the hits (repeatable; see `qmdctl plugin list`)."),
    Opt("strict_plugins", ("--strict-plugins",), "flag", False,
        "Fail with PLUGIN_FAILED when a plugin fails, instead of answering without it (with a warning)."),
)

COMMANDS: tuple[Command, ...] = (
    Command(("search",), "Keyword (BM25) search over the indexed collections.", "search:search", (
        Opt("query", (), "str", None, "The query (several words are OR-ed, ranked by BM25).", "+"),
        *_RESULT_OPTS,
    )),
    Command(("vsearch",), "Semantic search: nearest chunks by embedding (run `qmdctl embed` first).",
            "search:vsearch", (
                Opt("query", (), "str", None, "The query, in your own words.", "+"),
                *_RESULT_OPTS,
            )),
    Command(("query",), "Hybrid search: BM25 and vectors fused by RRF, then reranked if a reranker is set.",
            "search:query", (
                Opt("query", (), "str", None, "Plain text, or one `lex:`/`vec:`/`hyde:` line per sub-query.", "+"),
                *_RESULT_OPTS,
                Opt("no_rerank", ("--no-rerank",), "flag", False, "Skip the cross-encoder reranker."),
                Opt("intent", ("--intent",), "str", None, "Background that steers reranking and snippets, never "
                    "searched itself (as a first `intent:` line; qmd's --intent)."),
                Opt("candidates", ("-C", "--candidates", "--candidate-limit"), "int", 100,
                    "Documents taken from each list before fusion (qmd: --candidate-limit).",
                    low=1, high=1000),
            )),
    Command(("embed",), "Embed chunks that have no vector yet (resumable; unchanged text is never redone).",
            "admin:embed", (
                _COLLECTION_FILTER,
                Opt("force", ("-f", "--force"), "flag", False,
                    "Re-embed every chunk of the selected collections, replacing their vectors in place "
                    "(an interrupted run goes on where it stopped when run again with -f)."),
                Opt("max_docs_per_batch", ("--max-docs-per-batch",), "int", None,
                    "At most N chunks read and embedded per page (qmd counts documents; qmdd pages by chunk; "
                    "default 128).", low=1, high=100_000),
                Opt("max_batch_mb", ("--max-batch-mb",), "int", None,
                    "At most N MB of chunk text (UTF-8) per page (a larger single chunk still goes alone).",
                    low=1, high=100_000),
                Opt("timeout", ("--timeout",), "float", None,
                    "Stop after the page in progress once this many minutes have passed (0 or unset: no limit); "
                    "embed again to go on.", low=0),
            )),
    Command(("model", "list"), "List the embedding and reranker models and which are in use.", "model:list_", ()),
    Command(("model", "import"), "Import a BERT-family checkpoint folder (safetensors) as a model.",
            "model:import_", (
                Opt("path", (), "str", None, "Folder with config.json, model.safetensors, tokenizer.json."),
                Opt("name", ("--name",), "str", None, "Model name (default: the folder's name)."),
                Opt("kind", ("--kind",), "str", None, "embedding or reranker (default: from the checkpoint)."),
                Opt("pooling", ("--pooling",), "str", None, "mean or cls (embedding models; default: detected)."),
                Opt("max_length", ("--max-length",), "int", None, "Token limit (default: from the checkpoint)."),
            )),
    Command(("model", "use"), "Serve a role with a model: NAME, or 'default' / 'none' (reranker).", "model:use", (
        Opt("name", (), "str", None, "Model name; 'default' or 'none' to reset the role."),
        Opt("role", ("--role",), "str", None, "embedding or reranker (default: the model's kind)."),
    )),
    Command(("get",), "Print a document: path, qmd://collection/path or #docid, with :from:count.", "docs:get", (
        Opt("target", (), "str", None, "FILE[:FROM[:COUNT]], qmd://collection/path or #docid."),
        Opt("from_line", ("--from",), "int", None, "First line to print (1-based).", low=1),
        Opt("lines", ("-l", "--lines"), "int", None, "At most this many lines.", low=1),
        Opt("no_line_numbers", ("--no-line-numbers",), "flag", False, "Print the text without line numbers."),
        Opt("line_numbers", ("--line-numbers",), "flag", False, "Number lines (the default for text)."),
        Opt("full", ("--full",), "flag", False,
            "The whole document: what get prints anyway; accepted as qmd accepts it (a FILE:FROM:COUNT "
            "suffix, --from and -l still narrow it)."),
        Opt("full_path", ("--full-path",), "flag", False,
            "Show on-disk paths instead of qmd:// + docid: ./-prefixed under the working directory, absolute "
            "otherwise; a document whose file is gone keeps qmd:// + docid, with a warning on stderr."),
    )),
    Command(("multi-get",), "Print several documents by glob or comma-separated list.", "docs:multi_get", (
        Opt("patterns", (), "list", None, "Globs (e.g. 'notes/**/*.md') or comma-separated paths.", "+"),
        Opt("lines", ("-l", "--lines"), "int", None, "At most this many lines per document.", low=1),
        Opt("max_bytes", ("--max-bytes",), "int", 64 * 1024, "Skip documents larger than this (qmd's default).", low=1),
        Opt("no_line_numbers", ("--no-line-numbers",), "flag", False, "Print the text without line numbers."),
        Opt("line_numbers", ("--line-numbers",), "flag", False, "Number lines (the default for text)."),
        Opt("full_path", ("--full-path",), "flag", False,
            "Show on-disk paths instead of qmd:// + docid: ./-prefixed under the working directory, absolute "
            "otherwise; a document whose file is gone keeps qmd:// + docid, with a warning on stderr."),
    )),
    Command(("ls",), "List collections, or the files of COLLECTION[/path] (a path prefix, as qmd: "
            "`notes/2026_06` lists 2026_06_01.md and 2026_06/...).", "docs:ls", (
        Opt("target", (), "str", None, "COLLECTION[/prefix], qmd://collection/prefix, or a folder inside a "
            "collection.", "?"),
    )),
    Command(("status",), "Show collections, index size, actor statistics and problems.", "admin:status", (),
            ),
    Command(("update",), "Rescan collections and index what changed.", "admin:update", (
        _COLLECTION_FILTER,
        Opt("pull", ("--pull",), "flag", False,
            "First run `git pull --ff-only` in each collection whose folder is in a git work tree (a failed "
            "pull is a warning; the rescan still runs)."),
    )),
    Command(("init",), "Create a project-local index for this folder (qmd's `init`): its own daemon and "
            "collections, used by qmdctl in this folder and below.", "init:init", (),
            effect="write .qmd/qmdd-index in the current folder, naming this folder's own index (the daemon is "
            "not contacted)"),
    Command(("cleanup",), "Compact the database and repair derived indexes.", "admin:cleanup", ()),
    Command(("metrics",), "Print the daemon's metrics (Prometheus text format), as GET /metrics serves them.",
            "admin:metrics", ()),
    Command(("collection", "add"), "Add a folder as a collection and index it.", "collection:add", (
        Opt("path", (), "str", None, "The folder; '.' for the current directory."),
        Opt("name", ("--name",), "str", None, "Collection name (default: the folder's name)."),
        Opt("mask", ("--mask", "--glob"), "list", None, "Include glob (repeatable; default **/*.md)."),
        Opt("exclude", ("--exclude",), "list", None, "Exclude pattern, gitignore style (repeatable)."),
        Opt("no_update", ("--no-update",), "flag", False, "Register without indexing now."),
    )),
    Command(("collection", "list"), "List collections.", "collection:list_", (), aliases=("ls",)),
    Command(("collection", "show"), "Show one collection: root, masks, excludes, counts, contexts.",
            "collection:show", (Opt("name", (), "str", None, "Collection name."),), aliases=("info",)),
    Command(("collection", "remove"), "Remove a collection and its index entries.", "collection:remove", (
        Opt("name", (), "str", None, "Collection name."),
    ), aliases=("rm",)),
    Command(("collection", "rename"), "Rename a collection.", "collection:rename", (
        Opt("old", (), "str", None, "Current name."),
        Opt("new", (), "str", None, "New name."),
    ), aliases=("mv",)),
    Command(("context", "add"), "Describe a path; the text is returned with every hit below it.", "context:add", (
        Opt("args", (), "list", None, "[TARGET] TEXT: TARGET is qmd://c/path, a folder, or / (global); "
            "default: the current directory.", "+"),
    )),
    Command(("context", "list"), "List contexts.", "context:list_", ()),
    Command(("context", "rm"), "Remove a context.", "context:remove", (
        Opt("target", (), "str", None, "qmd://collection/path, a folder, or /."),
    ), aliases=("remove",)),
    Command(("plugin", "install"), "Install a WebAssembly plugin (.wasm or .wat; plugins/ABI.md).",
            "plugin:install", (
                Opt("path", (), "str", None, "The module: NAME.wasm or NAME.wat (a NAME.toml beside it is its "
                    "manifest)."),
                Opt("name", ("--name",), "str", None, "Install it under this name (default: the manifest's, or "
                    "the file's)."),
                Opt("manifest", ("--manifest",), "str", None, "The manifest (default: NAME.toml beside the module)."),
                Opt("replace", ("--replace",), "flag", False, "Replace an installed plugin of the same name."),
            )),
    Command(("plugin", "list"), "List installed plugins: hooks, state, collections, calls and failures.",
            "plugin:list_", (), aliases=("ls",)),
    Command(("plugin", "info"), "Show one plugin: manifest, limits, hooks, calls, fuel, time and failures.",
            "plugin:info", (Opt("name", (), "str", None, "Plugin name."),)),
    Command(("plugin", "remove"), "Uninstall a plugin (collections running it stop; transforms are undone).",
            "plugin:remove", (Opt("name", (), "str", None, "Plugin name."),), aliases=("rm",)),
    Command(("plugin", "enable"), "Enable a plugin again (after `disable`, or after it was disabled for failing).",
            "plugin:enable", (Opt("name", (), "str", None, "Plugin name."),)),
    Command(("plugin", "disable"), "Disable a plugin: searches and indexing run without it.",
            "plugin:disable", (Opt("name", (), "str", None, "Plugin name."),)),
    Command(("plugin", "attach"), "Run a plugin by default on a collection: on its hits, and on its documents "
            "(transforms; the collection is indexed again).", "plugin:attach", (
                Opt("name", (), "str", None, "Plugin name."),
                Opt("collection", ("-c", "--collection"), "str", None, "The collection."),
            )),
    Command(("plugin", "detach"), "Stop running a plugin by default on a collection.", "plugin:detach", (
        Opt("name", (), "str", None, "Plugin name."),
        Opt("collection", ("-c", "--collection"), "str", None, "The collection."),
    )),
    Command(("mcp",), "Serve the MCP protocol on stdio for agents (Claude Desktop, Claude Code, ...).", "mcp:serve", (
        Opt("action", (), "str", None, "stop: stop the daemon `mcp --http` started (a daemon started otherwise "
            "keeps running).", "?"),
        Opt("daemon", ("--daemon",), "flag", False,
            "With --http (implied): return at once, the daemon serving MCP over HTTP in the background, as qmd's "
            "`mcp --http --daemon` (the daemon always runs in the background; this is the same as --http)."),
        Opt("http", ("--http",), "flag", False,
            "Instead of stdio: make sure the daemon serves MCP over streamable HTTP (at /mcp of its HTTP door, "
            "starting it on 127.0.0.1:PORT if it is not running) and print the URL."),
        Opt("port", ("--port",), "int", 8181, "The port for --http when the daemon must be started (0: any free "
            "port).", low=0, high=65535),
    ), output=False, effect="serve MCP (JSON-RPC 2.0) on stdin/stdout until stdin closes, relaying every "
            "message through one `mcp.session` request to the daemon (started if not running); with --http, "
            "start the daemon with its HTTP door if none runs and print the /mcp URL; `stop`: stop the daemon "
            "`mcp --http` started, if it still runs"),
    Command(("daemon", "start"), "Start the daemon in the background (no-op if running).", "daemon:start", (
        Opt("no_watch", ("--no-watch",), "flag", False,
            "Do not watch collection roots for changes (index them with `qmdctl update`)."),
        Opt("http", ("--http",), "str", None,
            "Also serve the REST API over HTTP on HOST:PORT, e.g. 127.0.0.1:8181 (a bearer token guards it)."),
    ),
            effect="connect to the daemon; if none answers, start `python -m qmdd` detached and wait until it does"),
    Command(("daemon", "stop"), "Stop the daemon gracefully.", "daemon:stop", (),
            effect="connect to the daemon if one is running, send the `shutdown` request and wait for its process "
            "to exit"),
    Command(("daemon", "status"), "Is the daemon running? Where are its socket and log?", "daemon:status", (),
            effect="try to connect to the daemon (never starting one) and report its pid, socket and log"),
    Command(("http", "token"), "Print the HTTP door's bearer token (made if there is none).", "http:token", (
        Opt("rotate", ("--rotate",), "flag", False, "Replace the token: the old one stops working at once."),
    ),
            effect="read the token file in the data directory (write it first if missing, or a new one with "
            "--rotate); the daemon is not contacted"),
    # The service commands work out their --dry-run plan themselves: it names the unit files and commands.
    Command(("service", "install"), "Install qmdd as a systemd user service, started on demand by its socket.",
            "service:install", (
                Opt("no_socket", ("--no-socket",), "flag", False,
                    "No socket activation: the service starts with the user session."),
                Opt("no_start", ("--no-start",), "flag", False,
                    "Write and enable the units, but do not start them now."),
                Opt("watchdog", ("--watchdog",), "int", 60,
                    "Restart a daemon whose event loop is stuck this many seconds (WatchdogSec=; 0: off).", low=0),
                Opt("http", ("--http",), "str", None,
                    "Also serve HTTP (REST, MCP at /mcp) on HOST:PORT, e.g. 127.0.0.1:8181; the daemon then "
                    "runs from login on (no socket activation)."),
            )),
    Command(("service", "uninstall"), "Stop and disable the systemd user units and remove them.",
            "service:uninstall", ()),
    Command(("service", "status"), "Are the systemd user units installed, current, enabled and active?",
            "service:status", ()),
    Command(("doctor",), "Check the install, model, index, socket, daemon, service and HTTP door, and say how to "
            "fix what fails (exit status: the first failed check's error code).", "doctor:doctor", (),
            effect="inspect the install, the model files, the config, the data directory, the database (read-only), "
            "the socket, the systemd units and the HTTP door, and ask a daemon that holds the index for its "
            "status (never starting one)"),
    Command(("skill", "show"), "Print the qmdd skill: how an agent searches and reads with qmdctl and MCP.",
            "skill:show", (), effect="print the skill file shipped with qmdctl"),
    Command(("skill", "install"), "Install the qmdd skill into ./.agents/skills/qmdd (--global: ~/.agents/...).",
            "skill:install", (
                Opt("global_", ("--global",), "flag", False, "Install into ~/.agents/skills/qmdd."),
                Opt("force", ("-f", "--force"), "flag", False,
                    "Replace files or a .claude link that differ from what would be written."),
                Opt("yes", ("--yes",), "flag", False, "Also link .claude/skills/qmdd to it (for Claude Code)."),
            ), effect="write SKILL.md and references/ under .agents/skills/qmdd (./ or ~/ with --global), "
            "refusing files that differ unless --force, never following a link"),
    Command(("skills", "list"), "List the skills bundled with qmdctl.", "skill:list_",
            (), effect="list the skill folders shipped with qmdctl (or in QMDD_SKILLS_DIR)"),
    Command(("skills", "get"), "Print a bundled skill (--full: with its references).", "skill:get", (
        Opt("name", (), "str", None, "Skill name (see `qmdctl skills list`).", "?"),
        Opt("full", ("--full",), "flag", False, "Also print its references, templates and scripts."),
        Opt("all", ("--all",), "flag", False, "Print every bundled skill."),
    ), effect="read the skill's files shipped with qmdctl (or in QMDD_SKILLS_DIR)"),
    Command(("skills", "path"), "Print where the bundled skills (or skill NAME) are.", "skill:path", (
        Opt("name", (), "str", None, "Skill name (default: the folder holding them all).", "?"),
    ), effect="print the folder of the skills shipped with qmdctl (or QMDD_SKILLS_DIR)"),
    Command(("completion",), "Print a shell completion script: eval \"$(qmdctl completion bash)\", or zsh, fish.",
            "completion:script", (
                Opt("shell", (), "str", None, "bash, zsh or fish."),
            ), output=False, effect="print the completion script for the shell, made from the command table"),
)

GROUP_HELP = {
    "collection": "Manage collections (named folders).",
    "context": "Describe paths for agents and people.",
    "daemon": "Control the background daemon.",
    "http": "The HTTP door (`--http`): its bearer token.",
    "plugin": "WebAssembly plugins: scorers, filters and transforms (plugins/ABI.md).",
    "model": "Embedding and reranker models (offline; imported from local folders).",
    "service": "Run qmdd as a systemd user service (socket activation, journald, watchdog).",
    "skill": "The qmdd skill for agents: print it, or install it where agents look.",
    "skills": "The skills bundled with qmdctl: list, print, locate.",
}


def find_command(argv: list[str]) -> tuple[Command, list[str]] | None:
    """Match the leading words of argv to a command (or alias); returns it with the remaining args."""
    for cmd in COMMANDS:
        n = len(cmd.path)
        if len(argv) < n or argv[: n - 1] != list(cmd.path[:-1]):
            continue
        if argv[n - 1] == cmd.path[-1] or argv[n - 1] in cmd.aliases:
            return cmd, argv[n:]
    return None
