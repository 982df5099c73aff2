"""The training tools as a user runs them: real `python -m rnnkernels ...` processes on tiny data
(issue 17: startup summary, plain log lines, metrics file, loss plot, schedules, best and last
checkpoints, Ctrl-C, --resume, seq2seq metrics, translate modes and warnings, evaluate,
--version, --help defaults; issue 16.6/16.10 at the process level)."""
import csv
import json
import math
import os
import signal
import subprocess
import sys

import pytest
import torch

import rnnkernels
from rnnkernels import cli
from rnnkernels.app import load_checkpoint
from rnnkernels.app.schedules import teacher_forcing_ratio
from rnnkernels.models import EOS, UNK

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--hidden", "16", "--embed", "8", "--batch-size", "16", "--device", "cpu", "--threads", "1"]
DATES = ["train", "seq2seq", "--data", "builtin:dates", "--train-size", "200", "--eval-size", "20", *TINY]


def _env():
    # The CPU GEMM engine is chosen per process by timing both (csrc/cpu/gemm.h); on a loaded
    # machine two processes can choose differently (seen in CI: a 1e-7 change of the evaluated
    # loss), so the runs these tests compare bit for bit pin it.
    return dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
                RNNKERNELS_CPU_GEMM=os.environ.get("RNNKERNELS_CPU_GEMM", "blas"))


def rk(*argv, cwd=ROOT, timeout=300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rnnkernels", *argv], capture_output=True, text=True, cwd=cwd,
                          env=_env(), timeout=timeout, **kwargs)


def _payload(path):
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def dates_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dates")
    result = rk(*DATES, "--steps", "6", "--eval-every", "3", "--log-every", "2",
                "--lr-schedule", "step", "--lr-step-size", "2", "--lr-gamma", "0.5",
                "--teacher-forcing", "0.8", "--forcing-schedule", "linear", "--forcing-decay-steps", "4",
                "--metrics-file", str(folder / "m.csv"), "--plot-loss", str(folder / "loss.png"),
                "--metrics-json", str(folder / "final.json"), "--checkpoint", str(folder / "d.pt"))
    assert result.returncode == 0, result.stdout + result.stderr
    return folder, result


def test_startup_summary_and_plain_log_lines(dates_run):
    folder, result = dates_run
    assert "\r" not in result.stdout + result.stderr and "Traceback" not in result.stderr  # no bar off a terminal
    lines = result.stdout.splitlines()
    ck = load_checkpoint(str(folder / "d.pt"))
    parameters = sum(p.numel() for p in ck.model.parameters())
    assert lines[0].startswith("rnnkernels train seq2seq | device cpu, 1 process, 1 thread per process | float32 | "
                               "backend auto (rnn cpu, attention cpu)")
    assert lines[1] == (f"data builtin:dates: source char level, target char level, pairs: 200 train, 1,000 valid, "
                        f"1,000 test (evaluated: the first 20) | vocabulary {len(ck.src_vocab)} source, "
                        f"{len(ck.tgt_vocab)} target")
    assert lines[2].startswith("model seq2seq lstm, 1 layer, embed 8, hidden 16, attention general") \
        and lines[2].endswith(f"| {parameters:,} parameters")
    assert "adam lr 0.003" in lines[3] and "lr schedule step (x0.5 every 2 steps)" in lines[3] \
        and "teacher forcing 0.8 (linear to 0)" in lines[3]
    progress = [line for line in lines if line.startswith("step ") and "/6 " in line]
    assert [line.split()[1] for line in progress] == ["2/6", "4/6", "6/6"]
    for line in progress:
        for name in ("loss", "ppl", "accuracy", "lr", "tokens_per_s", "forcing", "elapsed_s"):
            assert f"  {name} " in line, line
    assert [line.split(":")[0] for line in lines if " valid: " in line or " test: " in line] == \
        ["step 3 valid", "step 6 valid", "step 6 test"]
    assert lines[-1].startswith("result: ")


def test_a_progress_bar_only_on_a_terminal(tmp_path):
    """stderr a terminal: tqdm draws its bar there, and the log lines still go to stdout as plain lines."""
    pty = pytest.importorskip("pty")
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal has a size
    try:
        result = subprocess.run([sys.executable, "-m", "rnnkernels", *DATES, "--steps", "4", "--log-every", "2",
                                 "--eval-every", "0", "--checkpoint", str(tmp_path / "x.pt")], stdout=subprocess.PIPE,
                                stderr=slave, text=True, cwd=ROOT, env=_env(), timeout=300)
        os.close(slave)
        terminal = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the terminal's other end is closed: all read
                break
            if not chunk:
                break
            terminal += chunk
    finally:
        os.close(master)
    assert result.returncode == 0
    assert b"\r" in terminal and b"4/4" in terminal and b"step" in terminal  # tqdm: "... 4/4 [..., step/s]"
    assert [line.split()[1] for line in result.stdout.splitlines() if line.startswith("step ") and "/4 " in line] \
        == ["2/4", "4/4"] and "\r" not in result.stdout


def test_metrics_file_schedules_and_checkpoints(dates_run):
    folder, _ = dates_run
    with open(folder / "m.csv", newline="") as f:
        records = list(csv.DictReader(f))
    train = [r for r in records if r["split"] == "train"]
    valid = [r for r in records if r["split"] == "valid"]
    assert [int(r["step"]) for r in train] == [2, 4, 6] and [int(r["step"]) for r in valid] == [3, 6]
    # the row at step s logs update s - 1: step schedule 3e-3 * 0.5 ** ((s - 1) // 2), linear forcing 0.8 -> 0 over 4
    assert [float(r["lr"]) for r in train] == pytest.approx([3e-3, 1.5e-3, 7.5e-4])
    assert [float(r["forcing"]) for r in train] == pytest.approx(
        [teacher_forcing_ratio("linear", 0.8, 0.0, 4, s - 1) for s in (2, 4, 6)])
    assert [float(r["forcing"]) for r in train] == pytest.approx([0.6, 0.2, 0.0])
    for r in valid:
        assert float(r["ppl"]) == pytest.approx(math.exp(float(r["loss"])))
        assert 0 <= float(r["accuracy"]) <= 1 and 0 <= float(r["exact_match"]) <= 1
    last, best = _payload(folder / "d.pt"), _payload(folder / "d.best.pt")
    assert last["step"] == 6 and last["optimizer"]["param_groups"][0]["lr"] == pytest.approx(7.5e-4)
    best_row = min(valid, key=lambda r: float(r["loss"]))
    assert best["step"] == int(best_row["step"]) and best["best"]["value"] == pytest.approx(float(best_row["loss"]))
    assert last["best"] == best["best"]
    final = json.load(open(folder / "final.json"))
    [test_row] = [r for r in records if r["split"] == "test"]
    assert final["test_loss"] == pytest.approx(float(test_row["loss"])) and final["step"] == 6
    with open(folder / "loss.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_evaluate_reproduces_the_runs_test_metrics(dates_run, tmp_path):
    folder, _ = dates_run
    result = rk("evaluate", "--checkpoint", str(folder / "d.pt"), "--json", str(tmp_path / "ev.json"),
                "--device", "cpu")
    assert result.returncode == 0, result.stderr
    final, evaluated = json.load(open(folder / "final.json")), json.load(open(tmp_path / "ev.json"))
    assert evaluated["split"] == "test" and evaluated["step"] == 6
    for name in ("loss", "ppl", "accuracy", "exact_match"):
        assert evaluated[name] == pytest.approx(final[f"test_{name}"], rel=1e-9, abs=1e-12), name
    assert result.stdout.splitlines()[-1].startswith("test: loss ")


def test_translate_plain_n_best_warnings_and_a_plot_per_input(dates_run, tmp_path):
    folder, _ = dates_run
    payload = _payload(folder / "d.pt")
    payload["model"]["decoder.output.bias"][[UNK, EOS]] = -1e4  # a model that never ends: every output is cut off
    torch.save(payload, tmp_path / "endless.pt")
    plots = str(tmp_path / "align-{n}.png")
    result = rk("translate", "--checkpoint", str(tmp_path / "endless.pt"), "--format", "plain", "--beam", "3",
                "--n-best", "2", "--max-len", "4", "--plot", plots, "25 Nov 2026", "  ", "3 Mäy 1999",
                "--device", "cpu")
    assert result.returncode == 0, result.stderr
    out = result.stdout.split("\n")
    assert len(out) == 7 and out[-1] == ""  # two lines per input, blank ones for the blank input
    assert out[2] == out[3] == "" and all(len(line) == 4 for line in out[:2] + out[4:6])  # cut at --max-len 4
    assert out[0] != out[1] and out[4] != out[5]
    warnings = result.stderr.splitlines()
    assert "warning: input 1 ('25 Nov 2026'): output cut off at --max-len 4 before <eos>" in warnings
    assert "warning: input 2 ('  ') is blank: no translation" in warnings
    assert "warning: input 3 ('3 Mäy 1999') has tokens the model never saw, read as <unk>: 'ä'" in warnings
    assert sorted(os.listdir(tmp_path)) == ["align-1.png", "align-3.png", "endless.pt"]


def test_ctrl_c_saves_a_checkpoint_and_resume_continues_from_it(tmp_path):
    ck = str(tmp_path / "run.pt")
    child = subprocess.Popen([sys.executable, "-m", "rnnkernels", *DATES, "--steps", "1000000", "--log-every", "1",
                              "--eval-every", "0", "--checkpoint", ck], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, cwd=ROOT, env=_env())
    try:
        for line in child.stdout:
            if line.startswith("step 3/"):
                child.send_signal(signal.SIGINT)
                break
        out, err = child.communicate(timeout=120)
    finally:
        child.kill()
    assert child.returncode == 130, err
    assert "Traceback" not in err and "SIGINT: stopping after this step" in err
    last = out.strip().splitlines()[-1]
    assert last.startswith("interrupted by SIGINT at step ") and last.endswith(f"{ck} saved; continue with --resume")
    stopped = int(last.split("at step ")[1].split(":")[0])
    assert stopped >= 3 and _payload(ck)["step"] == stopped

    result = rk("train", "seq2seq", "--checkpoint", ck, "--resume", "--steps", str(stopped + 2), "--lr", "0.001")
    assert result.returncode == 0, result.stderr
    [resumed] = [line for line in result.stdout.splitlines() if line.startswith("resumed from step")]
    assert resumed.startswith(f"resumed from step {stopped} of {ck} (")
    assert f"--steps {stopped + 2} replaces the checkpoint's 1000000" in resumed
    assert "--lr 0.001 replaces the checkpoint's 0.003" in resumed
    payload = _payload(ck)
    assert payload["step"] == stopped + 2 and payload["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.001)
    assert payload["options"]["train_size"] == 200  # options not given came from the checkpoint
    steps = [json.loads(line)["step"] for line in open(tmp_path / "run.metrics.jsonl")
             if json.loads(line)["split"] == "train"]
    assert steps == list(range(1, stopped + 3))  # --log-every 1 restored; nothing logged twice


def test_user_errors_from_real_processes(tmp_path):
    """The argument and path errors as a shell sees them (the full tables run in process: test_app.py)."""
    for argv, phrase in [
        (["train", "lm", "--clip", "-1"],
         "rnnkernels train lm: error: argument --clip: expected a number >= 0, got -1"),
        ([*DATES, "--checkpoint", "/dev/full"], "--checkpoint /dev/full exists and is not a regular file"),
    ]:
        result = rk(*argv)
        assert result.returncode == 2 and result.stdout == ""
        assert len(result.stderr.strip().splitlines()) == 1 and phrase in result.stderr, result.stderr
    assert os.listdir(tmp_path) == []


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"rnnkernels {rnnkernels.__version__} (torch ")


@pytest.mark.parametrize("command, defaults", [
    (["train", "lm"], ["--cell {gru,lstm,rnn} recurrent cell (default: lstm)",
                       "--layers N recurrent layers (default: 2)",
                       "--hidden N hidden size (default: 256)", "--dropout X dropout (default: 0.0)",
                       "(default: 0)", "--eval-every N", "(default: 500)", "--bptt N tokens per training window "
                       "(default: 128)", "--lr X peak learning rate (default: 0.002)"]),
    (["train", "seq2seq"], ["(default: lstm)", "(default: 128)", "--layers N recurrent layers (default: 1)",
                            "--attention {general,dot,none} Luong attention score, or none (default: general)",
                            "(default: builtin:dates)"]),
    (["translate"], ["--max-len N most output tokens per hypothesis (default: 100)", "beam size (1: greedy) "
                     "(default: 5)"]),
    (["generate"], ["(default: 200)", "(default: 0.8)", "(default: '\\n')"]),
    (["evaluate"], ["(default: test)"]),
    (["bench"], ["--repeats REPEATS (default: 5)"]),
])
def test_help_shows_the_defaults(command, defaults, capsys):
    with pytest.raises(SystemExit):
        cli.main([*command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for default in defaults:
        assert default in text, default


def test_word_targets_get_bleu_and_their_own_level(tmp_path, capsys):
    """A TSV of character sources and word targets: --src-level char --tgt-level word."""
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    pairs = [(f"{a}{b}", f"{words[a]} {words[b]}") for a in range(10) for b in range(10)]
    (tmp_path / "numbers.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in pairs))
    ck = str(tmp_path / "n.pt")
    code = cli.main(["train", "seq2seq", "--data", str(tmp_path / "numbers.tsv"), "--src-level", "char",
                     "--tgt-level", "word", "--steps", "3", "--eval-every", "0", "--log-every", "0",
                     "--best-metric", "bleu", "--metrics-json", str(tmp_path / "m.json"), "--checkpoint", ck, *TINY])
    out = capsys.readouterr().out
    assert code == 0 and "source char level, target word level" in out and "BLEU: " in out
    metrics = json.load(open(tmp_path / "m.json"))
    assert 0 <= metrics["valid_bleu"] <= 100 and 0 <= metrics["test_bleu"] <= 100
    assert metrics["best_step"] == 3 and "valid_bleu_best" in metrics
    ck_loaded = load_checkpoint(ck)
    assert (ck_loaded.src_level, ck_loaded.tgt_level) == ("char", "word")
    assert len(ck_loaded.src_vocab) == 4 + 10 and len(ck_loaded.tgt_vocab) == 4 + 10
    [result] = ck_loaded.translate(["42"], beam_size=2, max_len=3)
    assert result.source_tokens == ["4", "2"] and result.best.text == " ".join(result.best.tokens)
    assert all(token in words for token in result.best.tokens)


def test_lm_levels(tmp_path, capsys):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for split in ("train", "valid", "test"):
        (folder / f"{split}.txt").write_text("the cat sat on the mat\nthe dog ran\n" * 20)
    for level, expected in (("auto", "word"), ("char", "char")):
        ck = str(tmp_path / f"{level}.pt")
        assert cli.main(["train", "lm", "--data", str(folder), "--level", level, "--bptt", "8", "--steps", "1",
                         "--layers", "1", "--eval-every", "0", "--log-every", "0", "--checkpoint", ck, *TINY]) == 0
        assert load_checkpoint(ck).level == expected
        assert f"data {folder}: {expected} level" in capsys.readouterr().out
