"""What ``grid`` accepts, checked before any command runs; and its help, in the guide's spelling.

python-fire runs a command as soon as it has consumed the arguments it understands, decides an
argument's type from its text (``0x10`` would become 16) and reports an option it could not use
only afterwards. So the command line is checked here first, against the command's own
signature: the command and every option must exist (else a "did you mean"), positional
arguments fill only the required parameters, an option that takes a value has one, and a switch
(``--json``) takes none (``--json=true``/``=false`` are read as the switch, anything else is
refused). Every value reaches the command as the text the user typed (:func:`as_typed`); the
command parses sizes and numbers itself. A mistake is a :class:`UsageError`: one line, with the
command's usage, and nothing has run.

Commands are the public methods of the groups (``grid memory``, ``grid cluster``); their names
and options are spelled as the guide spells them: ``list-objects``, ``--block-id``. Each is marked
:func:`read_only` (it changes nothing, whatever it is given) or :func:`changing`, and a "did you
mean" never offers a command that changes something for a typo of one that only reads: when a
read-only command is close enough to the typo, the closest read-only one is offered
(``grid cluster stat``: status, never start); only when none is, the closest command.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

HELP_FLAGS = ("--help", "-h")


class UsageError(Exception):
    """The command line does not fit the command (exit code 2, nothing ran).

    Args:
        message: what was wrong.
        usage: the command's usage line.
    """

    def __init__(self, message: str, usage: str) -> None:
        super().__init__(message)
        self.usage = usage


@dataclass(frozen=True)
class Param:
    """One parameter of a command, as the command line spells it."""

    name: str  # the Python name
    required: bool
    switch: bool
    metavar: str
    help: str

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class Command:
    """One command: ``grid GROUP NAME``."""

    group: str
    name: str
    summary: str
    params: tuple[Param, ...]
    read_only: bool = False  # it changes nothing, whatever it is given

    @property
    def positionals(self) -> list[Param]:
        return [p for p in self.params if p.required]

    def usage(self) -> str:
        words = [f"grid {self.group} {self.name}"]
        words += [p.metavar for p in self.positionals]
        for p in self.params:
            if not p.required:
                words.append(f"[{p.option}]" if p.switch else f"[{p.option} {p.metavar}]")
        return "usage: " + " ".join(words)


def _doc_parts(doc: str | None) -> tuple[str, dict[str, str]]:
    """A docstring's first line and its ``Args:`` entries (name -> text)."""
    lines = inspect.cleandoc(doc or "").splitlines()
    summary = lines[0] if lines else ""
    args: dict[str, str] = {}
    current = None
    in_args = False
    for line in lines[1:]:
        if line.strip() == "Args:":
            in_args = True
            continue
        if in_args:
            if not line.strip() or not line.startswith(" "):
                if line.strip() and not line.startswith(" "):
                    in_args = False
                continue
            text = line.strip()
            head, sep, rest = text.partition(": ")
            if sep and line.startswith("    ") and not line.startswith("     ") and \
                    head.isidentifier():
                current = head
                args[current] = rest
            elif current is not None:
                args[current] += " " + text
    return summary, args


def command_of(group: str, method: Callable[..., Any],
               metavars: dict[str, str] | None = None) -> Command:
    """The command a group's method is, read from its signature and docstring."""
    summary, docs = _doc_parts(method.__doc__)
    params = []
    for p in inspect.signature(method).parameters.values():
        switch = p.default is False
        metavar = (metavars or {}).get(p.name, p.name.upper())
        params.append(Param(p.name, p.default is inspect.Parameter.empty, switch, metavar,
                            docs.get(p.name, "")))
    return Command(group, method.__name__.replace("_", "-"), summary, tuple(params),
                   read_only=getattr(method, "read_only", False))


def commands_of(groups: dict[str, Any],
                metavars: dict[tuple[str, str], dict[str, str]]) -> dict[str, dict[str, Command]]:
    """Every command of every group (``{"memory": {"list-objects": Command, ...}, ...}``)."""
    found: dict[str, dict[str, Command]] = {}
    for group, obj in groups.items():
        found[group] = {}
        for attr in dir(obj):
            if attr.startswith("_") or not callable(getattr(obj, attr)):
                continue
            name = attr.replace("_", "-")
            found[group][name] = command_of(group, getattr(obj, attr),
                                            metavars.get((group, name)))
    return found


def _did_you_mean(word: str, choices: list[str]) -> str:
    import difflib  # for a mistyped word only: not on every command's clock

    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def _did_you_mean_command(word: str, commands: dict[str, Command]) -> str:
    """The "did you mean" for an unknown command: the closest read-only command when one is
    close enough, else the closest command (see the module's docstring)."""
    readers = [name for name, command in commands.items() if command.read_only]
    return _did_you_mean(word, readers) or _did_you_mean(word, list(commands))


def check(argv: list[str], groups: dict[str, dict[str, Command]]) -> list[str]:
    """The command line for fire, once it is known to fit a command; see the module's docstring.

    Raises:
        UsageError: it does not.
    """
    top = "usage: grid {" + ",".join(groups) + "} COMMAND [ARGS...]   (grid --help)"
    if not argv:
        raise UsageError("grid needs a command", top)
    group, rest = argv[0], argv[1:]
    if group not in groups:
        raise UsageError(f"unknown command {group!r}{_did_you_mean(group, list(groups))}", top)
    names = sorted(groups[group])
    group_usage = f"usage: grid {group} {{{','.join(names)}}} [ARGS...]   (grid {group} --help)"
    if not rest:
        raise UsageError(f"grid {group} needs a command", group_usage)
    name = rest[0].replace("_", "-") if rest[0].replace("_", "-") in names else rest[0]
    if name not in groups[group]:
        raise UsageError(f"unknown command 'grid {group} {rest[0]}'"
                         f"{_did_you_mean_command(name, groups[group])}", group_usage)
    command = groups[group][name]
    return [group, name, *_check_args(command, rest[1:])]


def _check_args(command: Command, args: list[str]) -> list[str]:
    usage = command.usage()
    by_option = {p.option: p for p in command.params}
    out: list[str] = []
    positionals: list[str] = []
    given: set[str] = set()
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("--") or arg == "--":
            if arg == "--" or (arg.startswith("-") and len(arg) > 1 and
                               not arg[1:2].isdigit() and arg[1:2] != "."):
                raise UsageError(f"unknown option {arg!r}", usage)
            positionals.append(arg)
            continue
        option, has_value, value = arg.partition("=")
        option = option.replace("_", "-")
        negated = option.startswith("--no") and option[:2] + option[4:] in by_option and \
            by_option[option[:2] + option[4:]].switch
        param = by_option.get(option[:2] + option[4:] if negated else option)
        if param is None:
            options = sorted(by_option)
            raise UsageError(f"unknown option {option} for grid {command.group} {command.name}"
                             f"{_did_you_mean(option, options)}", usage)
        if param.name in given:
            raise UsageError(f"{param.option} is given twice", usage)
        given.add(param.name)
        if param.switch:
            if has_value:
                if negated or value.lower() not in ("true", "false"):
                    raise UsageError(f"{param.option} is a switch: give it without a value",
                                     usage)
                negated = value.lower() == "false"
            out.append(("--no" + param.option[2:]) if negated else param.option)
            continue
        if negated:
            raise UsageError(f"unknown option {option}", usage)
        if not has_value:
            if i >= len(args) or (args[i].startswith("--") and len(args[i]) > 2):
                raise UsageError(f"{param.option} needs a value ({param.metavar})", usage)
            value = args[i]
            i += 1
        out.append(f"{param.option}={value}")
    wanted = command.positionals
    unfilled = [p for p in wanted if p.name not in given]  # positionals fill these, in order
    if len(positionals) > len(unfilled):
        named = [p for p in wanted if p.name in given]
        if named and len(positionals) <= len(wanted):  # `allocate 10 --size-in-bytes=20`
            raise UsageError(f"{named[0].metavar} is given twice (as an argument and as "
                             f"{named[0].option})", usage)
        extra = positionals[len(unfilled)]
        raise UsageError(f"unexpected argument {extra!r}: grid {command.group} {command.name} "
                         f"takes {len(wanted)} ({' '.join(p.metavar for p in wanted) or 'none'});"
                         " options are given as --name VALUE", usage)
    if len(positionals) < len(unfilled):
        raise UsageError(f"missing {unfilled[len(positionals)].metavar}", usage)
    # fire is given every value by name: a positional "-" would be its command separator
    return [*(f"{p.option}={v}" for p, v in zip(unfilled, positionals, strict=True)), *out]


def read_only(method: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a command that changes nothing, whatever it is given (and :func:`as_typed`)."""
    method.read_only = True  # type: ignore[attr-defined]
    return as_typed(method)


def changing(method: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a command that may change something (and :func:`as_typed`)."""
    method.read_only = False  # type: ignore[attr-defined]
    return as_typed(method)


def as_typed(method: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a command so fire hands it every value as typed (a string): a key ``0x10`` stays
    ``"0x10"``; switches stay switches."""
    import fire

    names = [p.name for p in inspect.signature(method).parameters.values()
             if p.default is not False]
    return fire.decorators.SetParseFn(str, *names)(method)


def help_text(argv: list[str], groups: dict[str, dict[str, Command]],
              summaries: dict[str, str], version: str) -> str:
    """Help for what ``argv`` names (``grid``, ``grid memory``, ``grid memory store``)."""
    words = [a for a in argv if a not in HELP_FLAGS]
    group = words[0] if words and words[0] in groups else None
    if group is None:
        lines = [f"grid {version}: blocks of shared memory on a Ray cluster's nodes", "",
                 "usage: grid {" + ",".join(groups) + "} COMMAND [ARGS...]", "", "groups:"]
        lines += [f"  {g:<10} {summaries.get(g, '')}" for g in groups]
        lines += ["", "options:", "  --version  print the version", "  --help     this help",
                  "", "grid GROUP --help lists a group's commands."]
        return "\n".join(lines)
    name = words[1].replace("_", "-") if len(words) > 1 else None
    if name not in groups[group]:
        lines = [f"usage: grid {group} COMMAND [ARGS...]", "", summaries.get(group, ""), "",
                 "commands:"]
        lines += [f"  {n:<13} {c.summary}" for n, c in sorted(groups[group].items())]
        lines += ["", f"grid {group} COMMAND --help shows a command's arguments."]
        return "\n".join(lines)
    command = groups[group][name]
    lines = [command.usage(), "", command.summary]
    if command.positionals:
        lines += ["", "arguments:"]
        lines += [_entry(p.metavar, p.help) for p in command.positionals]
    optional = [p for p in command.params if not p.required]
    if optional:
        lines += ["", "options:"]
        for p in optional:
            shown = p.option if p.switch else f"{p.option} {p.metavar}"
            lines.append(_entry(shown, p.help))
    return "\n".join(lines)


HELP_WIDTH = 100


def _entry(name: str, text: str) -> str:
    """One argument's help: its name, then its text wrapped to :data:`HELP_WIDTH` columns,
    continued under the text's first column."""
    head = f"  {name:<22} "
    import textwrap  # for help only

    return textwrap.fill(text, HELP_WIDTH, initial_indent=head,
                         subsequent_indent=" " * 25, break_on_hyphens=False) or head.rstrip()
