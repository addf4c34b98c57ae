"""`qmdctl completion bash|zsh|fish`: a completion script made from the command table (`qmdctl.spec`), so it
knows every command, subcommand, alias and option the parsers know, and nothing they do not. The script is
static: a TAB never runs Python (nor starts the daemon); print it again after an upgrade.

It completes command and subcommand names, the options of the command on the line (after a `-`), the
values of --format (--output-format) and of a few fixed positionals (`completion SHELL`, `mcp stop`,
`skills get NAME`), and leaves everything else (paths, queries) to the shell's file completion.

    eval "$(qmdctl completion bash)"        # ~/.bashrc
    eval "$(qmdctl completion zsh)"         # ~/.zshrc, after compinit
    qmdctl completion fish | source         # ~/.config/fish/config.fish
"""

from __future__ import annotations

import sys

from qmdctl.spec import COMMANDS, FORMATS, GROUP_HELP, Command
from qmdd.protocol.errors import ErrorCode, QmddError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from qmdctl.invocation import Invocation

SHELLS = ("bash", "zsh", "fish")
FORMAT_OPTS = ("format", "output_format")
FORMAT_FLAGS = "|".join(sorted({f"--{name.replace('_', '-')}" for name in FORMAT_OPTS}))
TOP_OPTIONS = ("--help", "--version", "--skill")
# Positionals whose values are a fixed set (the rest are paths or free text: the shell's default).
CHOICES: dict[str, tuple[str, ...]] = {"completion": SHELLS, "mcp": ("stop",), "skills get": ("qmdd",),
                                       "skills path": ("qmdd",)}


def _groups() -> dict[str, list[Command]]:
    groups: dict[str, list[Command]] = {}
    for command in COMMANDS:
        if len(command.path) == 2:
            groups.setdefault(command.path[0], []).append(command)
    return groups


def _top_words() -> list[str]:
    return [c.path[0] for c in COMMANDS if len(c.path) == 1] + list(_groups())


def _names(command: Command) -> list[str]:
    """'collection remove' and its aliases ('collection rm')."""
    prefix = " ".join(command.path[:-1])
    return [f"{prefix} {n}".strip() for n in (command.path[-1], *command.aliases)]


def _flags(command: Command) -> list[str]:
    return [flag for opt in command.all_opts() for flag in opt.flags] + ["-h", "--help"]


def _walk(indent: str) -> str:
    """The shell code (bash and zsh alike) that reads the command path from the words before the cursor:
    the first word not an option, then a second one if the first is a group."""
    groups = "|".join(_groups())
    return (f"{indent}[[ $w == -* ]] && continue\n"
            f'{indent}if [[ -z $cmd ]]; then cmd="$w"; continue; fi\n'
            f'{indent}case "$cmd" in {groups}) cmd="$cmd $w" ;; *) break ;; esac\n')


def _arms(indent: str, array: str) -> str:
    """`case "$cmd"` arms setting the candidate words: bash assigns a string, zsh an array."""
    def arm(names: list[str], options: list[str], positional: tuple[str, ...]) -> str:
        pattern = "|".join(f'"{n}"' for n in names)
        opts, values = " ".join(options), " ".join(positional)
        if array:
            body = f"[[ $cur == -* ]] && {array}=({opts}) || {array}=({values})"
        else:
            body = f'[[ $cur == -* ]] && words="{opts}" || words="{values}"'
        return f"{indent}{pattern}) {body} ;;\n"

    lines = [arm([""], list(TOP_OPTIONS), tuple(_top_words()))]
    for group, members in _groups().items():
        subs = tuple(n.split(" ")[1] for c in members for n in _names(c))
        lines.append(arm([group], ["-h", "--help"], subs))
    for command in COMMANDS:
        lines.append(arm(_names(command), _flags(command), CHOICES.get(command.name, ())))
    return "".join(lines)


def bash_script() -> str:
    return (
        "# bash completion for qmdctl (made by `qmdctl completion bash` from its command table)\n"
        "_qmdctl() {\n"
        '    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}" cmd="" w i words=""\n'
        "    for ((i = 1; i < COMP_CWORD; i++)); do\n"
        '        w="${COMP_WORDS[i]}"\n'
        f"{_walk('        ')}"
        "    done\n"
        f'    case "$prev" in {FORMAT_FLAGS})\n'
        f'        COMPREPLY=($(compgen -W "{" ".join(FORMATS)}" -- "$cur")); return ;;\n'
        "    esac\n"
        '    case "$cmd" in\n'
        f"{_arms('        ', '')}"
        "    esac\n"
        '    COMPREPLY=($(compgen -W "$words" -- "$cur"))\n'
        "}\n"
        "complete -o default -o bashdefault -F _qmdctl qmdctl\n")


def zsh_script() -> str:
    return (
        "#compdef qmdctl\n"
        "# zsh completion for qmdctl (made by `qmdctl completion zsh` from its command table)\n"
        "_qmdctl() {\n"
        '    local cur="${words[CURRENT]}" prev="${words[CURRENT-1]}" cmd="" w i\n'
        "    local -a cands\n"
        "    for ((i = 2; i < CURRENT; i++)); do\n"
        '        w="${words[i]}"\n'
        f"{_walk('        ')}"
        "    done\n"
        f"    if [[ $prev == ({FORMAT_FLAGS}) ]]; then compadd -- {' '.join(FORMATS)}; return; fi\n"
        '    case "$cmd" in\n'
        f"{_arms('        ', 'cands')}"
        "    esac\n"
        '    if (( ${#cands} )); then compadd -- "${cands[@]}"; else _files; fi\n'
        "}\n"
        'if [[ $zsh_eval_context[-1] == loadautofunc ]]; then _qmdctl "$@"; else compdef _qmdctl qmdctl; fi\n')


def _fish_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def fish_script() -> str:
    groups = " ".join(_groups())
    lines = [
        "# fish completion for qmdctl (made by `qmdctl completion fish` from its command table)",
        "function __qmdctl_using",
        '    set -l cmd ""',
        "    for w in (commandline -opc)[2..-1]",
        "        string match -q -- '-*' $w; and continue",
        '        if test -z "$cmd"',
        "            set cmd $w",
        "            continue",
        "        end",
        "        switch $cmd",
        f"            case {groups}",
        '                set cmd "$cmd $w"',
        "            case '*'",
        "                break",
        "        end",
        "    end",
        '    test "$cmd" = "$argv[1]"',
        "end",
        "complete -c qmdctl -n '__qmdctl_using \"\"' -l version -d 'Print the version and exit'",
        "complete -c qmdctl -n '__qmdctl_using \"\"' -l skill -d 'Print the qmdd skill (skill show)'",
    ]

    def line(where: str, rest: str) -> None:
        lines.append(f"complete -c qmdctl -n {_fish_quote(f'__qmdctl_using {_fish_quote(where)}')} {rest}")

    for command in COMMANDS:
        if len(command.path) == 1:
            line("", f"-f -a {command.path[0]} -d {_fish_quote(command.help)}")
    for group, members in _groups().items():
        line("", f"-f -a {group} -d {_fish_quote(GROUP_HELP.get(group, ''))}")
        for command in members:
            for name in (command.path[1], *command.aliases):
                line(group, f"-f -a {name} -d {_fish_quote(command.help)}")
    for command in COMMANDS:
        for name in _names(command):
            for opt in command.all_opts():
                if not opt.flags:
                    continue
                spec = " ".join(f"-s {f[1:]}" if len(f) == 2 else f"-l {f[2:]}" for f in opt.flags)
                value = f" -xa {_fish_quote(' '.join(FORMATS))}" if opt.name in FORMAT_OPTS else (
                    "" if opt.kind == "flag" else " -r")
                line(name, f"{spec}{value} -d {_fish_quote(opt.help)}")
            if command.name in CHOICES:
                line(name, f"-f -a {_fish_quote(' '.join(CHOICES[command.name]))}")
    return "\n".join(lines) + "\n"


SCRIPTS = {"bash": bash_script, "zsh": zsh_script, "fish": fish_script}


def script(inv: Invocation) -> int:
    shell = inv.args.get("shell") or ""
    if shell not in SCRIPTS:
        raise QmddError(ErrorCode.INVALID_INPUT, f"no completion for shell {shell!r}",
                        hints=(f"Choose one of {', '.join(SHELLS)}: eval \"$(qmdctl completion bash)\".",))
    sys.stdout.write(SCRIPTS[shell]())
    return 0
