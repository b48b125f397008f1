"""The command-line reference, generated from pplvm's argparse parser
(:func:`pplvm.cli.build_parser`): every subcommand with its usage, arguments and help. An
argument without help text is a build warning (an error under ``-W``)."""

from __future__ import annotations

import argparse
from typing import Any

from .rst import heading, literal, table, text, undocumented

WHERE = "reference/cli"


def _subcommands(parser: argparse.ArgumentParser) -> tuple[dict[str, argparse.ArgumentParser], dict[str, str]]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help or "" for a in action._choices_actions}
    return dict(action.choices), helps


def _name(action: argparse.Action) -> str:
    if action.option_strings:
        takes = action.nargs != 0
        choices = f"{{{','.join(map(str, action.choices))}}}" if action.choices else action.dest.upper()
        metavar = action.metavar or choices
        return ", ".join(f"{o} {metavar}" if takes else o for o in action.option_strings)
    return action.metavar or action.dest


def _details(action: argparse.Action) -> str:
    parts = []
    if action.choices and action.option_strings:
        parts.append("one of " + ", ".join(literal(c) for c in action.choices))
    if action.required and action.option_strings:
        parts.append("required")
    if isinstance(action, argparse._AppendAction):
        parts.append("repeatable")
    if action.nargs in ("+", "*"):
        parts.append("one or more" if action.nargs == "+" else "any number")
    if action.option_strings and action.nargs != 0 and action.default not in (None, [], argparse.SUPPRESS):
        parts.append(f"default {literal(action.default)}")
    return "; ".join(parts)


def arguments(parser: argparse.ArgumentParser, command: str) -> list[list[str]]:
    rows = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        name = _name(action)
        if not action.help:
            undocumented(f"argument {name} of {command!r} has no help text", WHERE)
        rows.append([literal(name), text(action.help or ""), _details(action)])
    return rows


def page(app: Any) -> str:
    from pplvm.cli import build_parser

    parser = build_parser()
    out = [heading("Command line", "=")]
    out.append(
        "Generated from the parser of ``pplvm`` itself, so every command and argument listed exists. "
        "Errors are one line (``pplvm: error: ...``) with exit status 2; ``--json`` prints one JSON object "
        "with a ``schema`` key.\n"
    )
    out.append(f"::\n\n   {parser.format_usage().strip()}\n")
    out.append(table(["argument", "help", ""], arguments(parser, "pplvm"), widths=[30, 55, 15]))
    commands, helps = _subcommands(parser)
    for name, sub in commands.items():
        out.append(f".. _cli-{name}:\n\n" + heading(f"pplvm {name}", "-"))
        if not helps.get(name):
            undocumented(f"subcommand {name!r} has no help text", WHERE)
        out.append(text(sub.description or helps.get(name, "")) + "\n")
        usage = sub.format_usage().strip().removeprefix("usage: ")
        out.append("::\n\n   " + "\n   ".join(usage.splitlines()) + "\n")
        out.append(table(["argument", "help", ""], arguments(sub, name), widths=[30, 55, 15]))
    return "\n".join(out)
