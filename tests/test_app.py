"""The training application's parts, in process: schedules, BLEU, the metrics file, output-path
rules, checkpoint checks, n-best beam search, and the one-line errors of bad arguments and
damaged checkpoints (issue 16, items 6 and 10). The real commands in subprocesses are in
test_app_cli.py."""
import errno
import math
import os
import signal

import pytest
import torch

from rnnkernels import cli
from rnnkernels.app import UserError, load_checkpoint
from rnnkernels.app.files import atomic_write, check_output_path
from rnnkernels.app.loop import StopSignals
from rnnkernels.app.metrics import corpus_bleu
from rnnkernels.app.reporting import MetricsLog
from rnnkernels.app.schedules import LRSchedule, teacher_forcing_ratio
from rnnkernels.models import Seq2Seq

TINY = ["--hidden", "16", "--embed", "8", "--batch-size", "16", "--eval-every", "0", "--device", "cpu",
        "--log-every", "0"]
DATES = ["train", "seq2seq", "--data", "builtin:dates", "--train-size", "200", "--eval-size", "20", *TINY]


def _run(argv, capsys):
    try:
        code = cli.main(argv)
    except SystemExit as exit_:  # argparse's errors
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def _fails_with(argv, capsys, *phrases):
    code, out, err = _run(argv, capsys)
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return out


# ----------------------------------------------------------------------------- schedules


def test_lr_schedules():
    base = 0.01
    warm = LRSchedule("constant", base, total_steps=100, warmup_steps=4)
    assert [warm.lr(i) for i in range(6)] == pytest.approx([base / 4, base / 2, 3 * base / 4, base, base, base])
    step = LRSchedule("step", base, total_steps=100, step_size=3, gamma=0.5, min_lr=0.002)
    assert [step.lr(i) for i in range(10)] == pytest.approx([base] * 3 + [base / 2] * 3 + [0.0025] * 3 + [0.002])
    cosine = LRSchedule("cosine", base, total_steps=10, min_lr=0.001)
    assert cosine.lr(0) == pytest.approx(base) and cosine.lr(10) == pytest.approx(0.001)
    assert cosine.lr(5) == pytest.approx((base + 0.001) / 2) and cosine.lr(50) == pytest.approx(0.001)
    plateau = LRSchedule("plateau", base, total_steps=100, gamma=0.1, patience=2)
    reduced = [plateau.observe(v, higher_is_better=False) for v in (3.0, 2.0, 2.5, 2.6, 1.0, 1.5, 1.5)]
    assert reduced == [False, False, False, True, False, False, True]
    assert plateau.lr(7) == pytest.approx(base * 0.01)
    again = LRSchedule("plateau", base, total_steps=100, gamma=0.1, patience=2)
    again.load_state_dict(plateau.state_dict())
    assert again.lr(7) == plateau.lr(7) and again.best == 1.0
    accuracy = LRSchedule("plateau", base, total_steps=100, gamma=0.5, patience=1)
    assert [accuracy.observe(v, higher_is_better=True) for v in (0.5, 0.6, 0.55)] == [False, False, True]


def test_teacher_forcing_schedules():
    """Scheduled sampling (Bengio et al. 2015): each schedule starts at the ratio given, falls
    monotonically towards the floor, and has its documented value at the decay horizon."""
    start, floor, n = 0.9, 0.1, 1000
    assert teacher_forcing_ratio("constant", start, floor, n, 500) == start
    linear = [teacher_forcing_ratio("linear", start, floor, n, i) for i in (0, 250, 500, 1000, 5000)]
    assert linear == pytest.approx([0.9, 0.7, 0.5, 0.1, 0.1])
    exponential = teacher_forcing_ratio("exponential", start, floor, n, n)
    assert exponential == pytest.approx(floor + (start - floor) * 0.01)
    sigmoid = [teacher_forcing_ratio("inverse-sigmoid", start, floor, n, i) for i in range(0, 2001, 100)]
    assert sigmoid[0] == pytest.approx(start)
    assert abs(sigmoid[5] - (start + floor) / 2) < 0.02  # the midpoint at n / 2
    assert sigmoid[10] - floor < 0.02 * (start - floor)
    for kind in ("linear", "exponential", "inverse-sigmoid"):
        values = [teacher_forcing_ratio(kind, start, floor, n, i) for i in range(0, 3000, 37)]
        assert all(a >= b for a, b in zip(values, values[1:])) and min(values) >= floor - 1e-12


def test_stop_signals_turn_sigterm_and_a_first_sigint_into_a_flag():
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.received == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C quits at once
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is before


# ----------------------------------------------------------------------------- BLEU


def test_corpus_bleu_against_hand_computed_values():
    ref = "the cat sat on a mat".split()
    assert corpus_bleu([ref], [ref]) == pytest.approx(100.0)
    # precisions 5/6, 3/5, 2/4, 1/3, equal lengths: BLEU = (1/12) ** (1/4)
    assert corpus_bleu(["the cat sat on the mat".split()], [ref]) == pytest.approx(100 * (1 / 12) ** 0.25)
    # 2/4, 1/3, no trigram (smoothed 1/(2*2)), no 4-gram (1/(4*1)); brevity exp(1 - 5/4)
    expected = 100 * math.exp(1 - 5 / 4) * (0.5 * (1 / 3) * 0.25 * 0.25) ** 0.25
    assert corpus_bleu(["a b c d".split()], ["a b x y z".split()]) == pytest.approx(expected)
    # corpus level: counts add up over sentences before the ratio
    two = corpus_bleu(["a b c d".split(), ref], ["a b x y z".split(), ref])
    assert two == pytest.approx(100 * math.exp(1 - 11 / 10) * ((8 / 10) * (6 / 8) * (4 / 6) * (3 / 4)) ** 0.25)
    assert corpus_bleu([["x"]], [ref]) == 0.0 and corpus_bleu([[]], [ref]) == 0.0


def test_bleu_matches_sacrebleu_when_installed():
    sacrebleu = pytest.importorskip("sacrebleu")
    hyps = ["the cat sat on the mat", "a b c d e f", "one two three four five"]
    refs = ["the cat sat on a mat", "a b x d e f", "one two three four five six"]
    ours = corpus_bleu([h.split() for h in hyps], [r.split() for r in refs])
    assert ours == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs], tokenize="none").score, abs=1e-6)


# ----------------------------------------------------------------------------- files


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_metrics_log_round_trip_and_resume(tmp_path, suffix):
    path = str(tmp_path / f"m{suffix}")
    log = MetricsLog(path)
    for step in (1, 2, 3):
        log.add({"step": step, "split": "train", "loss": 1.0 / step})
    log.add({"step": 3, "split": "valid", "loss": 0.5, "bleu": 12.5})
    log.add({"step": 4, "split": "train", "loss": float("nan")})
    reread = MetricsLog(path, resume_step=3)  # a resumed run keeps what its checkpoint had seen
    assert [(r["step"], r["split"]) for r in reread.records] == [(1, "train"), (2, "train"), (3, "train"), (3, "valid")]
    assert reread.records[3]["bleu"] == 12.5 and reread.records[1]["loss"] == 0.5
    with open(path) as f:
        text = f.read()
    assert "nan" not in text.lower()  # JSON has no NaN: written as null (an empty CSV cell)
    if suffix == ".csv":
        assert text.splitlines()[0] == "step,split,loss,bleu"
    fresh = MetricsLog(path)  # a new run starts the file afresh
    assert fresh.records == [] and os.path.getsize(path) == 0


def test_metrics_log_skips_a_line_cut_short(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1, "split": "train", "loss": 2.0}\n{"step": 2, "spl')
    assert MetricsLog(str(path), resume_step=5).records == [{"step": 1, "split": "train", "loss": 2.0}]


def test_output_paths_that_must_not_be_replaced(tmp_path):
    target = tmp_path / "real.pt"
    target.write_bytes(b"precious")
    link = tmp_path / "link.pt"
    link.symlink_to(target)
    with pytest.raises(UserError, match="--checkpoint .*link.pt is a symbolic link"):
        check_output_path(str(link), "--checkpoint")
    with pytest.raises(OSError, match="symbolic link"):
        atomic_write(str(link), lambda tmp: open(tmp, "wb").close())
    assert link.is_symlink() and target.read_bytes() == b"precious"
    with pytest.raises(UserError, match="/dev/full exists and is not a regular file"):
        check_output_path("/dev/full", "--checkpoint")
    with pytest.raises(UserError, match="exists and is not a regular file"):
        check_output_path(str(tmp_path), "--metrics-json")
    with pytest.raises(UserError, match="cannot write into"):
        check_output_path(str(target / "sub" / "x.pt"), "--checkpoint")
    check_output_path(str(tmp_path / "new" / "x.pt"), "--checkpoint")
    assert sorted(os.listdir(tmp_path / "new")) == []  # the probe leaves nothing behind


# ----------------------------------------------------------------------------- beam search


def test_n_best_beam_search_is_sorted_and_its_first_is_the_best():
    torch.manual_seed(3)
    model = Seq2Seq(12, 9, embed_size=8, hidden_size=16).eval()
    src = torch.randint(4, 12, (3, 6))
    lengths = torch.tensor([6, 3, 5])
    best = model.beam_search(src, lengths, beam_size=4, max_len=7)
    many = model.beam_search(src, lengths, beam_size=4, max_len=7, n_best=3)
    assert many.tokens.shape[:2] == (3, 3) and many.scores.shape == (3, 3) and many.alignments.shape[:2] == (3, 3)
    assert torch.equal(many.tokens[:, 0], best.tokens) and torch.equal(many.scores[:, 0], best.scores)
    assert torch.equal(many.alignments[:, 0], best.alignments)
    assert bool((many.scores[:, :-1] >= many.scores[:, 1:]).all())
    for b in range(3):  # distinct hypotheses, each padded after its length
        rows = {tuple(many.tokens[b, k, : int(many.lengths[b, k])].tolist()) for k in range(3)}
        assert len(rows) == 3
        for k in range(3):
            assert (many.tokens[b, k, int(many.lengths[b, k]):] == 0).all()
    with pytest.raises(ValueError, match="n_best must lie in"):
        model.beam_search(src, lengths, beam_size=2, n_best=3)


# ----------------------------------------------------------------------------- bad arguments (issue 16.10)


BAD_ARGUMENTS = [
    (["train", "lm", "--clip", "-1"], "argument --clip: expected a number >= 0, got -1"),
    (["train", "lm", "--bptt", "0"], "argument --bptt: expected an integer >= 1, got 0"),
    (["train", "lm", "--lr", "nan"], "argument --lr: expected a number > 0, got nan"),
    (["train", "lm", "--lr", "-1"], "argument --lr: expected a number > 0, got -1"),
    (["train", "lm", "--lr", "inf"], "argument --lr"),
    (["train", "lm", "--eval-tokens", "0"], "argument --eval-tokens: expected an integer >= 2, got 0"),
    (["train", "lm", "--steps", "0"], "argument --steps"),
    (["train", "lm", "--batch-size", "-3"], "argument --batch-size"),
    (["train", "lm", "--layers", "0"], "argument --layers"),
    (["train", "lm", "--hidden", "ten"], "argument --hidden: expected an integer >= 1, got 'ten'"),
    (["train", "lm", "--dropout", "1"], "argument --dropout: expected a number in [0, 1), got 1"),
    (["train", "lm", "--weight-decay", "-0.1"], "argument --weight-decay"),
    (["train", "lm", "--momentum", "1"], "argument --momentum"),
    (["train", "lm", "--lr-gamma", "0"], "argument --lr-gamma"),
    (["train", "lm", "--threads", "0"], "argument --threads"),
    (["train", "lm", "--time-limit", "0"], "argument --time-limit"),
    (["train", "lm", "--eval-every", "-1"], "argument --eval-every"),
    (["train", "lm", "--optimizer", "lion"], "argument --optimizer: invalid choice"),
    (["train", "lm", "--lr-sched", "step"], "unrecognized arguments: --lr-sched"),  # no abbreviations
    (["train", "seq2seq", "--teacher-forcing", "1.5"], "argument --teacher-forcing: expected a number in [0, 1]"),
    (["generate", "--checkpoint", "x.pt", "--temperature", "nan"], "argument --temperature"),
    (["generate", "--checkpoint", "x.pt", "--top-k", "0"], "argument --top-k"),
    (["generate", "--checkpoint", "x.pt", "--max-tokens", "-1"], "argument --max-tokens"),
    (["translate", "--checkpoint", "x.pt", "--beam", "0"], "argument --beam"),
    (["translate", "--checkpoint", "x.pt", "--max-len", "0"], "argument --max-len"),
    (["translate", "--checkpoint", "x.pt", "--length-penalty", "nan"], "argument --length-penalty"),
    (["evaluate", "--checkpoint", "x.pt", "--split", "dev"], "argument --split: invalid choice"),
]


@pytest.mark.parametrize("argv, phrase", BAD_ARGUMENTS, ids=[" ".join(a[:1] + a[-2:]) for a, _ in BAD_ARGUMENTS])
def test_bad_arguments_are_one_line_errors_naming_the_argument(argv, phrase, capsys):
    _fails_with(argv, capsys, phrase, "(see rnnkernels ")


def test_bad_combinations_are_refused_before_any_work(tmp_path, capsys):
    ck = str(tmp_path / "x.pt")
    for argv, phrase in [
        ([*DATES, "--hidden", "15"], "--hidden must be even"),
        ([*DATES, "--teacher-forcing", "0.5", "--forcing-min", "0.6"], "--forcing-min 0.6 is above --teacher-forcing"),
        ([*DATES, "--best-metric", "bleu"], "--best-metric bleu needs word-level targets"),
        ([*DATES, "--level", "word"], "builtin:dates is character data"),
        ([*DATES, "--plot-loss", str(tmp_path / "loss.txt")], "--plot-loss"),
        ([*DATES, "--resume"], "--resume: checkpoint"),
        (["translate", "--checkpoint", ck, "--beam", "2", "--n-best", "3", "x"], "--n-best 3 is more than --beam 2"),
    ]:
        out = _fails_with([*argv, "--checkpoint", ck] if argv[0] == "train" else argv, capsys, phrase)
        assert "step" not in out
    assert os.listdir(tmp_path) == []


def test_tensorboard_is_optional(tmp_path, capsys):
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        _fails_with([*DATES, "--tensorboard", str(tmp_path / "tb"), "--checkpoint", str(tmp_path / "x.pt")], capsys,
                    "--tensorboard needs the tensorboard package")
        return
    assert _run([*DATES, "--steps", "1", "--tensorboard", str(tmp_path / "tb"),
                 "--checkpoint", str(tmp_path / "x.pt")], capsys)[0] == 0
    assert any(name.startswith("events.") for name in os.listdir(tmp_path / "tb"))


def test_checkpoint_paths_that_are_not_regular_files(tmp_path, capsys):
    """--checkpoint /dev/full once turned the device node into a file; a symlink was replaced."""
    _fails_with([*DATES, "--checkpoint", "/dev/full"], capsys,
                "--checkpoint /dev/full exists and is not a regular file")
    assert os.path.exists("/dev/full") and not os.path.isfile("/dev/full")
    target = tmp_path / "target.pt"
    target.write_bytes(b"keep")
    (tmp_path / "link.pt").symlink_to(target)
    _fails_with([*DATES, "--checkpoint", str(tmp_path / "link.pt")], capsys, "is a symbolic link")
    assert target.read_bytes() == b"keep" and (tmp_path / "link.pt").is_symlink()
    _fails_with([*DATES, "--checkpoint", str(target / "x.pt")], capsys, "cannot write into")
    _fails_with([*DATES, "--checkpoint", str(tmp_path / "ok.pt"), "--metrics-file", "/dev/null"], capsys,
                "--metrics-file /dev/null exists and is not a regular file")


def test_a_failed_checkpoint_write_is_one_line_and_keeps_the_last_good_one(tmp_path, capsys, monkeypatch):
    ck = tmp_path / "x.pt"
    real_save = torch.save

    def disk_full_after_step_1(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("step", 0) >= 2:
            with open(f, "wb") as handle:
                handle.write(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full_after_step_1)
    _fails_with([*DATES, "--steps", "3", "--eval-every", "1", "--checkpoint", str(ck)], capsys,
                f"could not write the checkpoint {tmp_path}", "No space left on device",
                "the previous one is unchanged")
    assert torch.load(ck, weights_only=True)["step"] == 1
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]


@pytest.mark.parametrize("optimizer, extra, state_key", [("sgd", ["--momentum", "0.9"], "momentum_buffer"),
                                                         ("adam", [], "exp_avg"), ("adamw", [], "exp_avg")])
def test_optimizer_choice_and_weight_decay(optimizer, extra, state_key, tmp_path, capsys):
    ck = str(tmp_path / "x.pt")
    assert _run([*DATES, "--steps", "2", "--optimizer", optimizer, *extra, "--weight-decay", "0.01",
                 "--checkpoint", ck], capsys)[0] == 0
    state = torch.load(ck, weights_only=True)["optimizer"]
    assert state["param_groups"][0]["weight_decay"] == 0.01 and state_key in next(iter(state["state"].values()))
    if optimizer == "sgd":
        assert state["param_groups"][0]["momentum"] == 0.9
    code, out, _ = _run(["train", "seq2seq", "--checkpoint", ck, "--resume", "--steps", "3", "--weight-decay", "0.05"],
                        capsys)
    assert code == 0 and "--weight-decay 0.05 replaces the checkpoint's 0.01" in out
    resumed = torch.load(ck, weights_only=True)
    assert resumed["optimizer"]["param_groups"][0]["weight_decay"] == 0.05 and resumed["step"] == 3
    assert resumed["options"]["optimizer"] == optimizer and resumed["options"]["train_size"] == 200


def test_a_command_run_in_process_gives_the_thread_count_back(tmp_path, capsys):
    before = torch.get_num_threads()
    wanted = 1 if before > 1 else 2
    assert _run([*DATES, "--steps", "1", "--threads", str(wanted), "--checkpoint", str(tmp_path / "x.pt")],
                capsys)[0] == 0
    assert torch.get_num_threads() == before
    _fails_with([*DATES, "--threads", str(wanted), "--device", "tpu", "--checkpoint", str(tmp_path / "y.pt")], capsys,
                "--device")
    assert torch.get_num_threads() == before


def test_a_loss_that_becomes_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    from rnnkernels.app.tasks import Seq2SeqTask

    real_loss, calls = Seq2SeqTask.loss, []

    def nan_from_the_second_step(self, model, batch, forcing=1.0):
        loss, stats = real_loss(self, model, batch, forcing)
        calls.append(1)
        return (loss * float("nan") if len(calls) >= 2 else loss), stats

    monkeypatch.setattr(Seq2SeqTask, "loss", nan_from_the_second_step)
    ck = tmp_path / "x.pt"
    _fails_with([*DATES, "--steps", "4", "--eval-every", "1", "--checkpoint", str(ck)], capsys,
                "the loss became nan at step 2; try a smaller --lr")
    saved = torch.load(ck, weights_only=True)
    assert saved["step"] == 1 and all(bool(torch.isfinite(t).all()) for t in saved["model"].values())


# ----------------------------------------------------------------------------- damaged checkpoints (issue 16.10)


@pytest.fixture(scope="module")
def dates_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "good.pt"
    assert cli.main([*DATES, "--steps", "2", "--checkpoint", str(path), "--metrics-file", "none"]) == 0
    return path


def _edited(payload, edit):
    payload = {**payload, "config": dict(payload["config"]), "vocabs": dict(payload["vocabs"]),
               "model": dict(payload["model"]), "options": dict(payload["options"])}
    edit(payload)
    return payload


DAMAGE = {
    "no vocabularies": (lambda p: p.pop("vocabs"), "it holds no vocabularies"),
    "no source vocabulary": (lambda p: p["vocabs"].pop("src_vocab"), "vocabulary src_vocab is missing"),
    "vocabulary too long": (lambda p: p["vocabs"].update(tgt_vocab=p["vocabs"]["tgt_vocab"] + ["zz"]),
                            "vocabulary tgt_vocab has"),
    "vocabulary without specials": (lambda p: p["vocabs"].update(tgt_vocab=["a"] + p["vocabs"]["tgt_vocab"][1:]),
                                    "must start with"),
    "negative size": (lambda p: p["config"].update(hidden_size=-4), "hidden_size must be an integer >= 1, got -4"),
    "string size": (lambda p: p["config"].update(num_layers="2"), "num_layers must be an integer >= 1"),
    "unknown config": (lambda p: p["config"].update(flux=1), "unknown model configuration key(s) flux"),
    "NaN weights": (lambda p: p["model"]["decoder.output.bias"].fill_(float("nan")),
                    "weight decoder.output.bias holds NaN or Inf"),
    "weights of another shape": (lambda p: p["model"].update({"decoder.output.bias": torch.zeros(3)}),
                                 "do not fit its configuration: size mismatch for decoder.output.bias"),
    "negative step": (lambda p: p.update(step=-1), "step must be an integer >= 0"),
    "bad level": (lambda p: p.update(tgt_level="byte"), "level must be one of"),
    "unknown kind": (lambda p: p.update(kind="gan"), "kind must be one of"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_checkpoints_are_refused_in_one_line(damage, dates_checkpoint, tmp_path, capsys):
    edit, phrase = DAMAGE[damage]
    payload = torch.load(dates_checkpoint, weights_only=True)
    bad = tmp_path / "bad.pt"
    torch.save(_edited(payload, edit), bad)
    _fails_with(["translate", "--checkpoint", str(bad), "25 Nov 2026"], capsys, phrase)
    _fails_with(["evaluate", "--checkpoint", str(bad)], capsys, phrase)
    with pytest.raises(UserError, match="damaged|kind must be|do not fit"):
        load_checkpoint(str(bad))


def test_resume_refuses_bad_saved_options_and_another_optimizer(dates_checkpoint, tmp_path, capsys):
    payload = torch.load(dates_checkpoint, weights_only=True)
    bad = tmp_path / "opts.pt"
    torch.save(_edited(payload, lambda p: p["options"].update(steps="many")), bad)
    _fails_with(["train", "seq2seq", "--checkpoint", str(bad), "--resume"], capsys,
                "the checkpoint's saved option --steps is invalid")
    copy = tmp_path / "copy.pt"
    torch.save(payload, copy)
    _fails_with(["train", "seq2seq", "--checkpoint", str(copy), "--resume", "--optimizer", "sgd"], capsys,
                "--optimizer sgd: the checkpoint's optimizer is adam")


def test_public_loader(dates_checkpoint):
    ck = load_checkpoint(str(dates_checkpoint))
    assert ck.kind == "seq2seq" and ck.step == 2 and not ck.model.training
    assert (ck.src_level, ck.tgt_level) == ("char", "char")
    assert ck.src_vocab.itos[:4] == ["<pad>", "<unk>", "<bos>", "<eos>"]
    assert len(ck.src_vocab) == ck.config["src_vocab_size"] and ck.options["train_size"] == 200
    [result] = ck.translate(["25 Nov 2026"], beam_size=2, n_best=2, max_len=12)
    assert len(result.hypotheses) == 2 and result.best.score >= result.hypotheses[1].score
    assert result.best.alignment.shape[1] == len("25 Nov 2026")
    with pytest.raises(UserError, match="not a lm model"):
        load_checkpoint(str(dates_checkpoint), kind="lm")
