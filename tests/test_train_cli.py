"""The training CLI: checkpoints that resume exactly, generate/translate, the
alignment plot, user errors (one line, exit 2, no traceback) and 2-process DDP."""
import json
import os
import subprocess
import sys

import pytest
import torch

from rnnkernels import cli
from rnnkernels.app import checkpoints

TINY = ["--hidden", "16", "--embed", "8", "--batch-size", "16", "--eval-every", "0", "--no-progress", "--device", "cpu"]
DATES = ["train", "seq2seq", "--data", "builtin:dates", "--train-size", "400", "--eval-size", "40", *TINY]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _weights(path):
    return torch.load(path, weights_only=True)["model"]


def _run(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_checkpoint_resume_continues_exactly(tmp_path, capsys):
    straight, split = str(tmp_path / "straight.pt"), str(tmp_path / "split.pt")
    forcing = ["--teacher-forcing", "0.7", "--dropout", "0.1", "--layers", "2"]  # draws from the saved RNG state
    assert _run([*DATES, *forcing, "--steps", "4", "--checkpoint", straight], capsys)[0] == 0
    assert _run([*DATES, *forcing, "--steps", "2", "--checkpoint", split], capsys)[0] == 0
    assert torch.load(split, weights_only=True)["step"] == 2
    code, out, _ = _run([*DATES, *forcing, "--steps", "4", "--checkpoint", split, "--resume"], capsys)
    assert code == 0 and "step 4" in out
    a, b = _weights(straight), _weights(split)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not any(name.startswith(".") for name in os.listdir(tmp_path))  # no temporary files left


def test_save_is_atomic(tmp_path, monkeypatch):
    path = str(tmp_path / "ck.pt")
    checkpoints.save_checkpoint(path, {"format": checkpoints.CHECKPOINT_FORMAT, "step": 1})

    def broken_save(obj, f):
        with open(f, "wb") as handle:
            handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        checkpoints.save_checkpoint(path, {"format": checkpoints.CHECKPOINT_FORMAT, "step": 2})
    assert torch.load(path, weights_only=True)["step"] == 1
    assert os.listdir(tmp_path) == ["ck.pt"]


def test_translate_with_plot(tmp_path, capsys):
    ckpt, png = str(tmp_path / "dates.pt"), str(tmp_path / "plots" / "alignment.png")
    assert _run([*DATES, "--steps", "3", "--checkpoint", ckpt], capsys)[0] == 0
    code, out, _ = _run(["translate", "--checkpoint", ckpt, "--beam", "3", "--plot", png, "25 Nov 2026", "11/25/26"],
                        capsys)
    assert code == 0
    lines = [line for line in out.splitlines() if "->" in line]
    assert len(lines) == 2 and lines[0].startswith("25 Nov 2026  ->") and "log p" in lines[0]
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(png) > 5000


def test_lm_train_and_seeded_generate(tmp_path, capsys):
    text = tmp_path / "book.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 60)
    ckpt = str(tmp_path / "lm.pt")
    code, out, _ = _run(["train", "lm", "--data", str(text), "--bptt", "16", "--layers", "1", "--steps", "3",
                         "--checkpoint", ckpt, *TINY], capsys)
    assert code == 0 and "valid_ppl" in out and "test_ppl" in out
    sample = ["generate", "--checkpoint", ckpt, "--prompt", "the ", "--max-tokens", "30", "--seed", "3"]
    first, second = _run(sample, capsys)[1], _run(sample, capsys)[1]
    assert first == second and first.startswith("the ") and len(first.rstrip("\n")) == 34
    assert _run(sample[:-1] + ["4"], capsys)[1] != first


def _fails_with(argv, capsys, *phrases):
    code, out, err = _run(argv, capsys)
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


def test_user_errors_are_one_line(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    bad_tsv = tmp_path / "bad.tsv"
    bad_tsv.write_text("one\ttwo\nthree four\n")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    lm_ckpt, s2s_ckpt = str(tmp_path / "lm.pt"), str(tmp_path / "s2s.pt")
    text = tmp_path / "t.txt"
    text.write_text("abcdefgh " * 100)
    assert _run(["train", "lm", "--data", str(text), "--bptt", "8", "--steps", "1", "--checkpoint", lm_ckpt, *TINY],
                capsys)[0] == 0
    assert _run([*DATES, "--steps", "1", "--checkpoint", s2s_ckpt], capsys)[0] == 0

    _fails_with(["train", "lm", "--data", str(tmp_path / "nope.txt"), *TINY], capsys, "nope.txt does not exist")
    _fails_with(["train", "lm", "--data", str(empty), *TINY], capsys, "is empty")
    _fails_with(["train", "seq2seq", "--data", str(bad_tsv), *TINY], capsys, "line 2: no tab")
    _fails_with(["translate", "--checkpoint", lm_ckpt, "x"], capsys, "holds a lm model, not a seq2seq model")
    _fails_with(["generate", "--checkpoint", s2s_ckpt], capsys, "holds a seq2seq model, not a lm model")
    _fails_with(["translate", "--checkpoint", str(garbage), "x"], capsys, "not a readable rnnkernels checkpoint")
    _fails_with(["translate", "--checkpoint", str(tmp_path / "missing.pt"), "x"], capsys, "does not exist")
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("".join(f"{i} x\t{i} y\n" for i in range(50)))
    _fails_with(["train", "seq2seq", "--data", str(tsv), "--steps", "2", "--checkpoint", s2s_ckpt, "--resume", *TINY],
                capsys, "another vocabulary")
    _fails_with([*DATES, "--hidden", "32", "--checkpoint", s2s_ckpt, "--resume"], capsys, "hidden_size")
    _fails_with([*DATES, "--backend", "warp-drive"], capsys, "unknown backend 'warp-drive'")
    _fails_with([*DATES, "--device", "tpu:0"], capsys, "--device")
    if not torch.cuda.is_available():
        _fails_with([*DATES, "--device", "cuda"], capsys, "no CUDA device")
    _fails_with(["train", "lm", "--data", str(text), "--embed", "8", "--hidden", "16", "--tie", "--steps", "1",
                 "--checkpoint", str(tmp_path / "tie.pt"), "--no-progress"], capsys, "tie_weights")
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["empty.txt", "bad.tsv", "garbage.pt", "t.txt", "pairs.tsv"]  # nothing partial written, only the two runs'
        + [f"{run}{suffix}" for run in ("lm", "s2s") for suffix in (".pt", ".best.pt", ".metrics.jsonl")])


def test_error_exit_from_a_real_process(tmp_path):
    result = subprocess.run([sys.executable, "-m", "rnnkernels", "train", "seq2seq", "--data", str(tmp_path / "x.tsv")],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"rnnkernels train: error: data file {tmp_path / 'x.tsv'} does not exist"]


def test_two_process_gloo_matches_one_process(tmp_path):
    """torchrun, 2 CPU processes: replicas stay identical, and the logged loss and the model follow one
    process on the same global batches. The targets differ in length, so the two ranks see different
    token counts: the loss is the global batch's per-token mean and the gradient its gradient (each
    rank's mean weighted by its share of the tokens), not the mean of the ranks' means."""
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    (tmp_path / "numbers.tsv").write_text("".join(f"{n}\t{' '.join(words[int(d)] for d in str(n))}\n"
                                                  for n in range(0, 2000, 7)))
    common = ["train", "seq2seq", "--data", str(tmp_path / "numbers.tsv"), "--tgt-level", "word", "--hidden", "16",
              "--embed", "8", "--steps", "5", "--batch-size", "8", "--eval-every", "0", "--eval-size", "10",
              "--log-every", "1", "--no-progress", "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    runs = {"ddp": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    "-m", "rnnkernels"], "one": [sys.executable, "-m", "rnnkernels"]}
    for name, launcher in runs.items():
        result = subprocess.run([*launcher, *common, "--checkpoint", str(tmp_path / f"{name}.pt"),
                                 "--metrics-json", str(tmp_path / f"{name}.json")], capture_output=True, text=True,
                                cwd=ROOT, env=env, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    ddp_metrics, one_metrics = (json.load(open(tmp_path / f"{n}.json")) for n in runs)
    assert ddp_metrics["replica_max_abs_diff"] == 0.0
    logged = {n: [json.loads(line)["loss"] for line in open(tmp_path / f"{n}.metrics.jsonl")
                  if json.loads(line)["split"] == "train"] for n in runs}
    assert len(logged["ddp"]) == len(logged["one"]) == 5
    for a, b in zip(logged["ddp"], logged["one"]):
        assert abs(a - b) < 1e-5 * b
    assert abs(ddp_metrics["last_loss"] - one_metrics["last_loss"]) < 1e-5 * one_metrics["last_loss"]
    a, b = _weights(tmp_path / "ddp.pt"), _weights(tmp_path / "one.pt")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
