"""The options of the commands, declared once: flag, default (shown by --help), how `--resume`
treats them, and a parser that rejects bad values with a message naming the option.

On --resume an option you do not give takes the checkpoint's value, so `--resume` alone
continues the run as it was started. One you give is applied from the resumed step on and
named in the "resumed from step N" line, except for the model's shape and the optimizer,
which must match the checkpoint ("model" options are refused when they differ).
"session" options (device, outputs, ...) belong to one invocation and are never restored.
"""
import argparse
import math
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from ..models.common import CELLS
from .errors import UserError
from .runtime import DTYPES
from .schedules import FORCING_SCHEDULES, LR_SCHEDULES

MODEL, TRAIN, SESSION = "model", "train", "session"


def integer(minimum: int):
    """argparse type: an integer >= minimum."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def number(low: Optional[float] = None, high: Optional[float] = None, low_open: bool = False,
           high_open: bool = False):
    """argparse type: a finite float in the range given (open or closed at each end)."""
    if low is not None and high is not None:
        wanted = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        wanted = f"a number {'>' if low_open else '>='} {low:g}"
    else:
        wanted = "a finite number"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        inside = math.isfinite(value)
        if inside and low is not None:
            inside = value > low if low_open else value >= low
        if inside and high is not None:
            inside = value < high if high_open else value <= high
        if not inside:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


class Spec(NamedTuple):
    flags: Tuple[str, ...]
    default: Any
    kind: str
    help: str
    extra: Dict[str, Any]
    section: Optional[str]

    @property
    def dest(self) -> str:
        return self.flags[0].lstrip("-").replace("-", "_")


def spec(*flags: str, default=None, kind: str = TRAIN, help: str = "", section: Optional[str] = None,
         **extra) -> Spec:
    return Spec(flags, default, kind, help, extra, section)


def sections(specs: List[Spec], name: str) -> List[Spec]:
    """The specs, those without a section put into `name`."""
    return [s if s.section else s._replace(section=name) for s in specs]


POSITIVE, NONNEGATIVE = integer(1), integer(0)
PROBABILITY = number(0.0, 1.0)

RUNTIME_SPECS = [
    spec("--device", default="auto", kind=SESSION, help="cpu, cuda, cuda:N, or auto: cuda when there is a GPU"),
    spec("--backend", default="auto", kind=SESSION,
         help="rnnkernels backend of the recurrent layers and attention (cpu, cuda, triton, reference) or auto: "
              "the fastest one built for the device"),
    spec("--threads", kind=SESSION, type=POSITIVE, help="CPU threads for torch (default: torch's choice; under "
                                                        "torchrun the cores are shared between the processes)"),
]
DTYPE_SPEC = spec("--dtype", default="float32", kind=SESSION, choices=sorted(DTYPES),
                  help="float32 or float64 weights, or bfloat16 / float16 autocast over float32 weights")


def train_specs(kind: str) -> List[Spec]:
    """Every option of `rnnkernels train <kind>`, in --help's sections."""
    lm = kind == "lm"
    hidden, layers, batch, lr = (256, 2, 32, 2e-3) if lm else (128, 1, 64, 3e-3)
    data = [
        spec("--data", default="builtin:python-stdlib" if lm else "builtin:dates", metavar="SPEC",
             help="builtin:python-stdlib, a folder of train.txt / valid.txt / test.txt (word level), or one text "
                  "file (character level)" if lm else "builtin:dates, or a TSV file of source<TAB>target lines"),
    ]
    if lm:
        data += [
            spec("--level", default="auto", choices=["auto", "char", "word"],
                 help="tokens: auto = words for a folder, characters for a file or builtin:python-stdlib"),
            spec("--bptt", default=128, type=POSITIVE, help="tokens per training window"),
            spec("--max-chars", type=POSITIVE, help="cut each builtin:python-stdlib split to this many characters"),
        ]
    else:
        data += [
            spec("--level", default="char", choices=["char", "word"], help="TSV tokens, source and target"),
            spec("--src-level", choices=["char", "word"], help="TSV source tokens (default: --level)"),
            spec("--tgt-level", choices=["char", "word"], help="TSV target tokens (default: --level)"),
            spec("--train-size", default=50_000, type=POSITIVE, help="builtin:dates training pairs"),
            spec("--data-seed", default=0, type=integer(0), help="seed of builtin:dates and of the TSV split"),
        ]
    model = [
        spec("--cell", default="lstm", kind=MODEL, choices=sorted(CELLS), help="recurrent cell"),
        spec("--layers", default=layers, kind=MODEL, type=POSITIVE, help="recurrent layers"),
        spec("--embed", default=64 if hidden <= 128 else 128, kind=MODEL, type=POSITIVE, help="embedding size"),
        spec("--hidden", default=hidden, kind=MODEL, type=POSITIVE,
             help="hidden size" + ("" if lm else " (even: the encoder gives half to each direction)")),
        spec("--dropout", default=0.0, kind=MODEL, type=number(0.0, 1.0, high_open=True), help="dropout"),
    ]
    model += [spec("--tie", kind=MODEL, action="store_true",
                   help="tie the output layer to the embedding (needs --embed == --hidden)")] if lm else [
        spec("--attention", default="general", kind=MODEL, choices=["general", "dot", "none"],
             help="Luong attention score, or none")]
    optimisation = [
        spec("--steps", default=2000, type=POSITIVE, help="total optimiser steps"),
        spec("--batch-size", default=batch, type=POSITIVE, help="global batch size (split over torchrun processes)"),
        spec("--optimizer", default="adam", choices=["adam", "adamw", "sgd"], help="optimiser"),
        spec("--lr", default=lr, type=number(0.0, low_open=True), help="peak learning rate"),
        spec("--momentum", default=0.0, type=number(0.0, 1.0, high_open=True), help="SGD momentum"),
        spec("--weight-decay", default=0.0, type=number(0.0),
             help="weight decay (L2 for adam and sgd, decoupled for adamw)"),
        spec("--lr-schedule", default="constant", choices=list(LR_SCHEDULES),
             help="constant; step: x --lr-gamma every --lr-step-size steps; cosine: down to --min-lr at --steps; "
                  "plateau: x --lr-gamma when the validation --best-metric has not improved for --lr-patience "
                  "evaluations"),
        spec("--warmup-steps", default=0, type=NONNEGATIVE, help="linear learning-rate warm-up over this many steps"),
        spec("--lr-step-size", default=1000, type=POSITIVE, help="steps between decays of the step schedule"),
        spec("--lr-gamma", default=0.5, type=number(0.0, 1.0, low_open=True), help="decay factor (step, plateau)"),
        spec("--lr-patience", default=2, type=POSITIVE, help="evaluations without improvement before plateau decays"),
        spec("--min-lr", default=0.0, type=number(0.0), help="floor of the decayed learning rate"),
        spec("--clip", default=1.0, type=number(0.0), help="gradient norm clipping (0: none)"),
        spec("--seed", default=0, type=integer(0), help="seed of the weights, the batch order and dropout"),
    ]
    if not lm:
        optimisation += [
            spec("--teacher-forcing", default=1.0, type=PROBABILITY,
                 help="probability of feeding the true previous token (1: all steps at once); where "
                      "--forcing-schedule starts"),
            spec("--forcing-schedule", default="constant", choices=list(FORCING_SCHEDULES),
                 help="scheduled sampling (Bengio et al. 2015): how the teacher-forcing ratio decays to "
                      "--forcing-min over --forcing-decay-steps"),
            spec("--forcing-min", default=0.0, type=PROBABILITY, help="the ratio the schedule decays to"),
            spec("--forcing-decay-steps", type=POSITIVE, help="steps of the decay (default: --steps)"),
        ]
    outputs = [
        spec("--checkpoint", default=f"runs/{kind}.pt", metavar="PATH", kind=SESSION,
             help="where the last checkpoint goes; the best one goes beside it as NAME.best.pt"),
        spec("--resume", kind=SESSION, action="store_true",
             help="continue the run saved in --checkpoint (it must exist); options not given are the checkpoint's"),
        spec("--time-limit", kind=SESSION, type=number(0.0, low_open=True),
             help="stop after this many seconds of training (validation not counted), then save"),
        spec("--eval-every", default=500, type=NONNEGATIVE,
             help="validate and save every N steps (0: at the end only)"),
        spec("--eval-tokens", default=100_000, type=integer(2), help="validation tokens per evaluation") if lm else
        spec("--eval-size", type=POSITIVE, help="evaluate on the first N valid and test pairs (default: all)"),
        spec("--best-metric", default="loss",
             choices=["loss", "ppl", "accuracy"] + ([] if lm else ["exact_match", "bleu"]),
             help="validation metric that picks the best checkpoint (and drives the plateau schedule)"),
        spec("--log-every", default=100, type=NONNEGATIVE, help="a progress line every N steps (0: none)"),
        spec("--metrics-file", default="auto", metavar="PATH", kind=SESSION,
             help="every log line and validation as a record: JSON lines, or CSV for a .csv name; "
                  "auto: NAME.metrics.jsonl beside --checkpoint; none: no file"),
        spec("--metrics-json", kind=SESSION, metavar="PATH", help="also write the final metrics to this JSON file"),
        spec("--plot-loss", kind=SESSION, metavar="PNG",
             help="write the loss curve to this PNG (at each validation and the end)"),
        spec("--tensorboard", kind=SESSION, metavar="DIR",
             help="also log to TensorBoard in this folder (needs tensorboard)"),
        spec("--no-progress", kind=SESSION, action="store_true",
             help="no progress bar (there is none anyway when stderr is not a terminal; log lines still print)"),
    ]
    return (sections(data, "data") + sections(model, "model") + sections(optimisation, "optimisation")
            + sections(outputs, "evaluation, checkpoints and logs") + sections(RUNTIME_SPECS + [DTYPE_SPEC], "runtime"))


_METAVARS = {"integer": "N", "number": "X"}


def add_specs(parser: argparse.ArgumentParser, specs: List[Spec]) -> None:
    """Adds each option (in its section's group) with default None, so that `resolve` can tell given
    from defaulted; --help shows the real default."""
    groups: Dict[str, Any] = {}
    for s in specs:
        target = parser
        if s.section:
            if s.section not in groups:
                groups[s.section] = parser.add_argument_group(s.section)
            target = groups[s.section]
        extra = dict(s.extra)
        if "type" in extra and "metavar" not in extra:
            extra["metavar"] = _METAVARS.get(extra["type"].__name__, None)
        action = target.add_argument(*s.flags, default=None, help=s.help, **extra)
        action.shown_default = s.default
    parser.set_defaults(specs=specs)


def _checked(s: Spec, value):
    """A value restored from a checkpoint, held to the rules a command-line value meets."""
    try:
        if value is not None and "type" in s.extra and s.extra["type"](str(value)) != value:
            raise argparse.ArgumentTypeError(f"expected {s.extra['type'].__name__}, got {value!r}")
        if value is not None and "choices" in s.extra and value not in s.extra["choices"]:
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(map(str, s.extra['choices']))}, "
                                             f"got {value!r}")
        if s.extra.get("action") == "store_true" and not isinstance(value, bool):
            raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")
    except argparse.ArgumentTypeError as error:
        raise UserError(f"the checkpoint's saved option {s.flags[0]} is invalid: {error}") from None
    return value


def resolve(args: argparse.Namespace, saved: Optional[Dict] = None) -> Tuple[Dict, List[Tuple[Spec, Any, Any]]]:
    """(options, changes): each option's given value, else the checkpoint's (`saved`, not for
    session options), else its default; changes lists the given values that differ from the
    checkpoint's as (spec, checkpoint value, given value)."""
    options, changes = {}, []
    for s in args.specs:
        given = getattr(args, s.dest)
        restorable = saved is not None and s.kind != SESSION and s.dest in saved
        if given is None:
            options[s.dest] = _checked(s, saved[s.dest]) if restorable else (
                False if s.extra.get("action") == "store_true" else s.default)
        else:
            options[s.dest] = given
            if restorable and saved[s.dest] != given:
                changes.append((s, saved[s.dest], given))
    return options, changes
