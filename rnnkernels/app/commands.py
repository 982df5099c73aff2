"""`rnnkernels train lm|seq2seq`, `generate`, `translate` and `evaluate`: argument parsing and output.

    rnnkernels train seq2seq --data builtin:dates --steps 2000 --checkpoint runs/dates.pt
    rnnkernels translate --checkpoint runs/dates.pt "25 Nov 2026" --beam 5 --plot runs/alignment.png
    rnnkernels evaluate --checkpoint runs/dates.pt --split test
    rnnkernels train lm --data builtin:python-stdlib --steps 1000 --checkpoint runs/stdlib.pt
    rnnkernels generate --checkpoint runs/stdlib.pt --prompt "def " --max-tokens 200

Under `torchrun --nproc_per_node=N -m rnnkernels train ...` training runs on N processes
(see rnnkernels.app.loop). Every problem with the arguments, the data or a file is one line
on stderr and exit code 2; Ctrl-C during training saves and exits with 130.
"""
import json
import math
import os
import sys
from typing import Dict, List

import torch

from ..backends import BackendUnavailableError
from ..data import DataError, Vocab, tokenize
from . import inference, loop, options as opts
from .checkpoints import levels_of, load_checkpoint, model_from_checkpoint, read_checkpoint
from .errors import UserError
from .files import check_output_path, write_text
from .plotting import check_plot_path, plot_alignment
from .reporting import format_metrics
from .runtime import Runtime
from .tasks import SPLITS, TASKS

USER_ERRORS = (UserError, DataError, BackendUnavailableError)


def _user_errors(fn):
    """User errors print one line and exit 2; Ctrl-C outside the loop's handler exits 130; anything else is a
    bug and keeps its traceback."""

    def run(args) -> int:
        try:
            return int(fn(args) or 0)
        except USER_ERRORS as error:
            print(f"rnnkernels {args.command}: error: {error}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"rnnkernels {args.command}: interrupted", file=sys.stderr)
            return 130

    return run


# ----------------------------------------------------------------------------- train


def _check_train_options(options: Dict, kind: str) -> None:
    """Rules between options (each option's own range is checked by the parser)."""
    if kind == "seq2seq":
        if options["hidden"] % 2:
            raise UserError(f"--hidden must be even for seq2seq (half per encoder direction), got {options['hidden']}")
        if options["forcing_min"] > options["teacher_forcing"]:
            raise UserError(f"--forcing-min {options['forcing_min']:g} is above --teacher-forcing "
                            f"{options['teacher_forcing']:g}")
    paths = loop.output_paths(options)
    check_output_path(paths["checkpoint"], "--checkpoint")
    check_output_path(paths["best"], "--checkpoint (its best-checkpoint file)")
    if paths["metrics"] is not None:
        check_output_path(paths["metrics"], "--metrics-file")
    if options["metrics_json"]:
        check_output_path(options["metrics_json"], "--metrics-json")
    if options["plot_loss"]:
        check_plot_path(options["plot_loss"], "--plot-loss")
        check_output_path(options["plot_loss"], "--plot-loss")
    if options["tensorboard"]:
        try:
            import torch.utils.tensorboard  # noqa: F401
        except ImportError:
            raise UserError("--tensorboard needs the tensorboard package (pip install tensorboard)") from None


def _compare_with_checkpoint(options: Dict, task, payload: dict, changes, path: str) -> List[str]:
    """UserError if the data's vocabulary or the model differs from the checkpoint's; notes for the rest."""
    if payload.get("vocabs") != task.vocabs:
        raise UserError(f"checkpoint {path} was trained with another vocabulary than --data {options['data']}")
    differing = sorted(k for k in set(task.config) | set(payload["config"])
                       if task.config.get(k) != payload["config"].get(k))
    if differing:
        detail = ", ".join(f"{k} {payload['config'].get(k)!r} there, {task.config.get(k)!r} here" for k in differing)
        raise UserError(f"checkpoint {path} has another model configuration ({detail}); change the options back "
                        f"or train to another --checkpoint")
    saved_optimizer = (payload.get("options") or {}).get("optimizer", "adam")
    if options["optimizer"] != saved_optimizer:
        raise UserError(f"--optimizer {options['optimizer']}: the checkpoint's optimizer is {saved_optimizer}, and "
                        f"its state cannot carry over; resume with --optimizer {saved_optimizer} or start a new run")
    return [f"{s.flags[0]} {new} replaces the checkpoint's {old}" for s, old, new in changes]


def train_command(args) -> int:
    kind = args.task
    options, _ = opts.resolve(args)
    payload, notes = None, []
    if options["resume"]:
        if not os.path.exists(options["checkpoint"]):
            raise UserError(f"--resume: checkpoint {options['checkpoint']} does not exist "
                            f"(drop --resume to start a new run)")
        payload = read_checkpoint(options["checkpoint"], kind)
        saved = payload.get("options") if isinstance(payload.get("options"), dict) else {}
        options, changes = opts.resolve(args, saved)
    _check_train_options(options, kind)
    with Runtime(options["device"], options["backend"], options["dtype"], allow_distributed=True,
                 threads=options["threads"]) as runtime:
        task = TASKS[kind](options)
        task.check_trainable(options["data"])
        if options["best_metric"] == "bleu" and task.levels.get("tgt_level") != "word":
            raise UserError("--best-metric bleu needs word-level targets (--tgt-level word)")
        if payload is not None:
            notes = _compare_with_checkpoint(options, task, payload, changes, options["checkpoint"])
        elif os.path.exists(options["checkpoint"]):
            notes = [f"note: {options['checkpoint']} exists and will be overwritten by this new run "
                     f"(add --resume to continue it)"]
        code = loop.train(options, task, runtime, payload, notes)
        if runtime.distributed:  # every rank done (rank 0 evaluates and saves last) before any tears down
            torch.distributed.barrier()
        return code


# ----------------------------------------------------------------------------- generate


def generate_command(args) -> int:
    with Runtime(args.device, args.backend, "float32", allow_distributed=False, threads=args.threads) as runtime:
        checkpoint = _load(args.checkpoint, "lm", runtime)
        tokens = tokenize(args.prompt, checkpoint.level)
        if not tokens:
            raise UserError("--prompt must hold at least one token")
        unknown = inference.unknown_tokens(tokens, checkpoint.vocab)
        if unknown:
            print(f"warning: the prompt has tokens the model never saw ({' '.join(map(repr, unknown))}); "
                  f"they read as <unk>", file=sys.stderr)
        with torch.no_grad(), runtime.use_backend():
            text = inference.generate(checkpoint, args.prompt, max_tokens=args.max_tokens, temperature=args.temperature,
                                      top_k=args.top_k, seed=args.seed)
        print(text)
        return 0


def _load(path: str, kind: str, runtime: Runtime):
    return load_checkpoint(path, device=runtime.device, dtype=runtime.param_dtype, kind=kind)


# ----------------------------------------------------------------------------- translate


def _inputs(args) -> List[str]:
    if args.inputs and args.input:
        raise UserError("give sources as arguments or with --input, not both")
    if args.input:
        if not os.path.isfile(args.input):
            raise UserError(f"--input {args.input} is not a readable file")
        with open(args.input, encoding="utf-8", errors="replace") as f:
            return [line.rstrip("\n") for line in f]
    if args.inputs:
        return list(args.inputs)
    return [line.rstrip("\n") for line in sys.stdin]


def _plot_paths(pattern: str, count: int) -> List[str]:
    """One path per input when the pattern holds {n} (1-based), else the first input only."""
    if "{n}" in pattern:
        return [pattern.replace("{n}", str(n)) for n in range(1, count + 1)]
    return [pattern]


def translate_command(args) -> int:
    if args.n_best > args.beam:
        raise UserError(f"--n-best {args.n_best} is more than --beam {args.beam}")
    if args.plot:
        check_plot_path(args.plot.replace("{n}", "1"), "--plot")
    with Runtime(args.device, args.backend, "float32", allow_distributed=False, threads=args.threads) as runtime:
        checkpoint = _load(args.checkpoint, "seq2seq", runtime)
        if args.plot and checkpoint.model.decoder.attention is None:
            raise UserError("--plot needs a model with attention (this one was trained with --attention none)")
        texts = _inputs(args)
        if not any(t.strip() for t in texts):
            raise UserError("nothing to translate: give sources as arguments, with --input or on stdin")
        plots = _plot_paths(args.plot, len(texts)) if args.plot else []
        for path in plots:
            check_output_path(path, "--plot")
        with torch.no_grad(), runtime.use_backend():
            results = inference.translate(checkpoint, texts, beam_size=args.beam, n_best=args.n_best,
                                          max_len=args.max_len, length_penalty=args.length_penalty,
                                          batch_size=args.batch_size)
        for number, result in enumerate(results, 1):
            label = f"input {number} ({result.source!r})"
            if not result.hypotheses:
                print(f"warning: {label} is blank: no translation", file=sys.stderr)
            if result.unknown:
                print(f"warning: {label} has tokens the model never saw, read as <unk>: "
                      f"{' '.join(map(repr, result.unknown))}", file=sys.stderr)
            if any(not h.finished for h in result.hypotheses):
                print(f"warning: {label}: output cut off at --max-len {args.max_len} before <eos>", file=sys.stderr)
            _print_translation(result, args.format, args.n_best)
        for path, result in zip(plots, results):
            if result.best is None:
                continue
            hypothesis = result.best
            output = hypothesis.tokens + (["<eos>"] if hypothesis.finished else [])
            plot_alignment(result.source_tokens, output, hypothesis.alignment, path,
                           f"{result.source!r} -> {hypothesis.text!r}")
            print(f"alignment of {result.source!r} written to {path}", file=sys.stderr)
        if args.plot and "{n}" not in args.plot and len(texts) > 1:
            print("note: --plot shows the first input; put {n} in its name for one plot per input", file=sys.stderr)
        return 0


def _print_translation(result, output_format: str, n_best: int) -> None:
    hypotheses = result.hypotheses
    if output_format == "plain":  # n_best lines per input, empty for a blank one: line i of the output is input i
        for k in range(n_best):
            print(hypotheses[k].text if k < len(hypotheses) else "")
        return
    if output_format == "jsonl":
        print(json.dumps({"source": result.source, "unknown": result.unknown, "hypotheses": [
            {"text": h.text, "log_prob": h.log_prob, "score": h.score, "finished": h.finished} for h in hypotheses]}))
        return
    for rank, h in enumerate(hypotheses, 1):
        prefix = f"[{rank}] " if n_best > 1 else ""
        print(f"{result.source}  ->  {prefix}{h.text}    (log p {h.log_prob:.4f}, p {math.exp(h.log_prob):.4f}, "
              f"score {h.score:.4f})")


# ----------------------------------------------------------------------------- evaluate


def evaluate_command(args) -> int:
    if args.json:
        check_output_path(args.json, "--json")
    with Runtime(args.device, args.backend, args.dtype, allow_distributed=False, threads=args.threads) as runtime:
        payload = read_checkpoint(args.checkpoint)
        kind = payload["kind"]
        saved = payload.get("options") if isinstance(payload.get("options"), dict) else {}
        if args.data is None and "data" not in saved:
            raise UserError(f"checkpoint {args.checkpoint} does not say what data it was trained on: give --data")
        defaults = {s.dest: s.default for s in opts.train_specs(kind)}
        options = {**defaults, **{k: v for k, v in saved.items() if k in defaults}, **levels_of(payload)}
        if args.data is not None:
            options["data"] = args.data
        if args.eval_size is not None:
            options["eval_size"] = args.eval_size
        if args.eval_tokens is not None:
            options["eval_tokens"] = args.eval_tokens
        vocabs = {name: Vocab(itos) for name, itos in payload["vocabs"].items()}
        task = TASKS[kind](options, **{k: v for k, v in vocabs.items() if k in ("vocab", "src_vocab", "tgt_vocab")})
        model = model_from_checkpoint(payload, runtime.device, runtime.param_dtype)
        with torch.no_grad(), runtime.use_backend():
            values = task.evaluate(model, runtime, args.split)
        print(f"{args.checkpoint} (step {payload.get('step', 0)}) on {options['data']} {args.split}: {task.describe()}")
        print(f"{args.split}: {format_metrics(values)}")
        if args.json:
            write_text(args.json, json.dumps({"checkpoint": args.checkpoint, "step": payload.get("step", 0),
                                              "data": options["data"], "split": args.split, **values}, indent=1))
        return 0


# ----------------------------------------------------------------------------- parsers


def _fill_defaults(fn):
    """Commands without --resume take every default at once."""

    def run(args):
        resolved, _ = opts.resolve(args)
        for name, value in resolved.items():
            setattr(args, name, value)
        return fn(args)

    return run


def add_parser(subparsers) -> None:
    train_parser = subparsers.add_parser("train", help="train a language model or an encoder-decoder",
                                         description="Train a model; see `rnnkernels train lm --help` and "
                                                     "`rnnkernels train seq2seq --help`.")
    tasks = train_parser.add_subparsers(dest="task", metavar="TASK")
    tasks.required = True
    descriptions = {
        "lm": "Recurrent language model. Data: builtin:python-stdlib (characters), a folder with train.txt, "
              "valid.txt and test.txt (words, <eos> per line), or one text file (characters, split 90/5/5); "
              "--level overrides the tokens.",
        "seq2seq": "Encoder-decoder with Luong attention. Data: builtin:dates (characters), or a TSV file of "
                   "source<TAB>target lines (split 90/5/5; --level / --src-level / --tgt-level pick the tokens).",
    }
    for kind, text in (("lm", "recurrent language model"), ("seq2seq", "encoder-decoder with attention")):
        parser = tasks.add_parser(kind, help=text, description=descriptions[kind])
        opts.add_specs(parser, opts.train_specs(kind))
        parser.set_defaults(func=_user_errors(train_command))

    gen = subparsers.add_parser("generate", help="sample text from a trained language model")
    gen_specs = [
        opts.spec("--checkpoint", required=True, help="a checkpoint of `rnnkernels train lm`"),
        opts.spec("--prompt", default="\n", help="text to continue"),
        opts.spec("--max-tokens", default=200, type=opts.NONNEGATIVE, help="tokens to sample"),
        opts.spec("--temperature", default=0.8, type=opts.number(0.0), help="sampling temperature (0: greedy)"),
        opts.spec("--top-k", type=opts.POSITIVE, help="sample from the k likeliest tokens only (default: all)"),
        opts.spec("--seed", default=0, type=opts.integer(0), help="seed of the sampling"),
    ]
    opts.add_specs(gen, [s._replace(kind=opts.SESSION) for s in gen_specs] + opts.RUNTIME_SPECS)
    gen.set_defaults(func=_user_errors(_fill_defaults(generate_command)))

    tr = subparsers.add_parser("translate", help="translate with a trained encoder-decoder (beam search)")
    tr.add_argument("inputs", nargs="*", help="sources to translate (default: --input, else the lines of stdin)")
    tr_specs = [
        opts.spec("--checkpoint", required=True, help="a checkpoint of `rnnkernels train seq2seq`"),
        opts.spec("--input", help="a file of sources, one per line"),
        opts.spec("--beam", default=5, type=opts.POSITIVE, help="beam size (1: greedy)"),
        opts.spec("--n-best", default=1, type=opts.POSITIVE, help="hypotheses to print per source (<= --beam)"),
        opts.spec("--length-penalty", default=1.0, type=opts.number(), help="scores are log p / length ** this"),
        opts.spec("--max-len", default=100, type=opts.POSITIVE, help="most output tokens per hypothesis"),
        opts.spec("--batch-size", default=64, type=opts.POSITIVE, help="sources per beam search"),
        opts.spec("--format", default="pretty", choices=["pretty", "plain", "jsonl"],
                  help="pretty: source -> output (scores); plain: the hypotheses only, --n-best lines per source "
                       "(empty for a blank one); jsonl: one JSON object per source"),
        opts.spec("--plot", help="attention heatmap PNG of the first source; a name with {n} (e.g. "
                                 "runs/align-{n}.png) gets one per source"),
    ]
    opts.add_specs(tr, [s._replace(kind=opts.SESSION) for s in tr_specs] + opts.RUNTIME_SPECS)
    tr.set_defaults(func=_user_errors(_fill_defaults(translate_command)))

    ev = subparsers.add_parser("evaluate", help="evaluate a trained model on a data split",
                               description="Loss, perplexity and accuracy (language model); also exact match and, "
                                           "for word-level targets, BLEU (encoder-decoder). The data is read with "
                                           "the checkpoint's vocabulary and levels.")
    ev_specs = [
        opts.spec("--checkpoint", required=True, help="a checkpoint of `rnnkernels train`"),
        opts.spec("--data", help="data to evaluate on (default: the data it was trained on)"),
        opts.spec("--split", default="test", choices=list(SPLITS), help="split of --data (all: the three together)"),
        opts.spec("--eval-size", type=opts.POSITIVE, help="seq2seq: the first N pairs (default: the training run's)"),
        opts.spec("--eval-tokens", type=opts.integer(2), help="lm: the first N tokens (default: the training run's)"),
        opts.spec("--json", help="also write the metrics to this JSON file"),
    ]
    opts.add_specs(ev, [s._replace(kind=opts.SESSION) for s in ev_specs] + opts.RUNTIME_SPECS + [opts.DTYPE_SPEC])
    ev.set_defaults(func=_user_errors(_fill_defaults(evaluate_command)))
