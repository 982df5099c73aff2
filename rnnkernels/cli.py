"""`rnnkernels <command>` (also `python -m rnnkernels <command>`).

Each command lives in its own module exposing `add_parser(subparsers)`, which
adds its sub-parser and sets `func` (taking the parsed args, returning an exit
code). A new command adds its module to _COMMAND_MODULES.
"""
import argparse
import importlib
import sys

_COMMAND_MODULES = ("rnnkernels.check", "rnnkernels.bench", "rnnkernels.train")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rnnkernels", description="Fast recurrent layers and attention for PyTorch")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module_name in _COMMAND_MODULES:
        importlib.import_module(module_name).add_parser(subparsers)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
