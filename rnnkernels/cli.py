"""`rnnkernels <command>` (also `python -m rnnkernels <command>`).

Each command lives in a module exposing `add_parser(subparsers)`, which adds its
sub-parser and sets `func` (taking the parsed args, returning an exit code). A
new command adds its module to _COMMAND_MODULES. Every parser prints its
options' defaults in --help and reports a bad argument as one line (exit 2).
"""
import argparse
import copy
import importlib
import os
import sys

_COMMAND_MODULES = ("rnnkernels.check", "rnnkernels.bench", "rnnkernels.app.commands")


def _shown_default(action):
    """What --help shows as the option's default, or None to show nothing."""
    default = getattr(action, "shown_default", action.default)
    if not action.option_strings or default is None or default is False or default == argparse.SUPPRESS:
        return None
    return repr(default) if isinstance(default, str) and (not default.strip() or "\n" in default) else default


class HelpFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to each option's help, X being what the option takes when not given."""

    def _format_action(self, action):
        shown = _shown_default(action)
        if not (action.help or "").strip() and shown is not None:  # argparse prints help only when there is some
            action = copy.copy(action)
            action.help = f"(default: {str(shown).replace('%', '%%')})"
        return super()._format_action(action)

    def _get_help_string(self, action):
        text = (action.help or "").strip()
        shown = _shown_default(action)
        if shown is None or "default" in text:
            return text
        return f"{text} (default: {str(shown).replace('%', '%%')})".strip()


class ArgumentParser(argparse.ArgumentParser):
    """One-line errors ("prog: error: argument --x: ..."), defaults in --help, no abbreviated options."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _version() -> str:
    from ._version import __version__

    import torch

    return f"rnnkernels {__version__} (torch {torch.__version__}, Python {sys.version.split()[0]})"


class _VersionAction(argparse.Action):
    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(_version())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="rnnkernels", description="Fast recurrent layers and attention for PyTorch: "
                                                           "checks, benchmarks, and the training tools")
    parser.add_argument("--version", action=_VersionAction, help="print the version and exit")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module_name in _COMMAND_MODULES:
        importlib.import_module(module_name).add_parser(subparsers)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # the reader went away (`... | head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
