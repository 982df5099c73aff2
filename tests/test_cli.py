"""The check and bench commands."""
import io
import json
import math
import subprocess
import sys

import torch

import rnnkernels as rk
from rnnkernels import backends, check
from rnnkernels.benchmarks import rnn as rnn_bench
from rnnkernels.benchmarks.suite import RNNConfig, RNNShape


def test_check_command_passes():
    result = subprocess.run([sys.executable, "-m", "rnnkernels", "check", "--cases", "4"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all checks passed" in result.stdout
    for name in backends.available("cpu"):
        assert f" {name} " in result.stdout
    rows = [line.split() for line in result.stdout.splitlines()]
    for dtype in ("float64", "float32"):  # attention is checked too: the cpu kernel and the reference
        for name in ("cpu", "reference"):
            assert ["attention", "cpu", name, dtype, "4"] == next(
                (r[:5] for r in rows if r[:4] == ["attention", "cpu", name, dtype]), None)


def test_check_catches_a_wrong_backend():
    """A backend whose output is off by a little must fail the harness."""

    def slightly_wrong(mode, x, *args):
        out, h, c = rk.reference.rnn_layer(mode, x, *args)
        return out * (1 + 1e-6), h, c

    backends.register("rnn", "slightly_wrong", slightly_wrong, priority={"cpu": -5})
    try:
        out = io.StringIO()
        ok = check.run_checks(cases=2, only=["slightly_wrong"], ops=("rnn",), out=out)
        assert not ok
        assert "FAIL" in out.getvalue()
    finally:
        backends.unregister("rnn", "slightly_wrong")


def test_relative_error_flags_nan_and_shape():
    a = torch.ones(3)
    assert check.relative_error(a, a) == 0
    assert check.relative_error(torch.tensor([1.0, float("nan"), 1.0]), a) == float("inf")
    assert check.relative_error(torch.ones(2), a) == float("inf")


def test_bench_rows():
    config = RNNConfig("gru", RNNShape(3, 2, 4, 5), num_layers=2, bidirectional=True, varlen=True)
    rows = rnn_bench.bench_config(config, ["reference"], "cpu", torch.float32, repeats=1)
    assert [row["pass"] for row in rows] == ["fwd", "fwd+bwd"]
    for row in rows:
        assert row["torch_ms"] > 0 and row["reference_ms"] > 0
        assert abs(row["reference_speedup"] - row["torch_ms"] / row["reference_ms"]) < 1e-9
    flops = rnn_bench.rnn_flops(config, backward=False)
    # layer 0: 2 dirs * 2*T*B*3H*(I+H); layer 1 input is 2H
    assert flops == 2 * 2 * 3 * 2 * 15 * (4 + 5) + 2 * 2 * 3 * 2 * 15 * (10 + 5)


def test_bench_attention_suite_table(tmp_path):
    """`rnnkernels bench --suite attention` on the smoke-test shapes: every row, finite speedups."""
    result = subprocess.run([sys.executable, "-m", "rnnkernels", "bench", "--suite", "attention", "--tiny",
                             "--repeats", "1", "--markdown", "--json", "--out-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads((tmp_path / "bench_cpu_float32.json").read_text())["results"]["attention"]
    expected = {(f"{shape} vs {baseline}", kind) for shape in ("seq2seq", "multihead", "decode", "multihead-unpadded")
                for baseline in ("sdpa", "weights") for kind in ("fwd", "fwd+bwd")}
    assert {(row["name"], row["pass"]) for row in rows} == expected and len(rows) == len(expected)
    for row in rows:
        assert set(row) == {"name", "shape", "pass", "baseline_ms", "cpu_ms", "cpu_speedup"}
        assert math.isfinite(row["cpu_speedup"]) and row["cpu_speedup"] > 0 and row["cpu_ms"] > 0, row
        assert abs(row["cpu_speedup"] - row["baseline_ms"] / row["cpu_ms"]) < 1e-9
    table = (tmp_path / "bench_cpu_float32.md").read_text()
    assert "| name | shape | pass | baseline_ms | cpu_ms | cpu_speedup |" in table
    assert all(f"| {row['name']} | {row['shape']} | {row['pass']} |" in table for row in rows)
    assert "cpu        decode vs sdpa fwd+bwd" in result.stdout  # the per-backend summary covers attention


def test_bench_layer_norm_suite_table(tmp_path):
    """`rnnkernels bench --suite layer_norm` on its tiny shape: the row's
    ratios are those of its times, and the summary names the suite's rows."""
    result = subprocess.run([sys.executable, "-m", "rnnkernels", "bench", "--suite", "layer_norm", "--tiny",
                             "--repeats", "1", "--json", "--out-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads((tmp_path / "bench_cpu_float32.json").read_text())["results"]["layer_norm"]
    assert [(row["name"], row["pass"], row["T, B, I, H"]) for row in rows] == [("ln_lstm", "fwd+bwd", "5, 3, 8, 8")]
    row = rows[0]
    assert abs(row["cpu_speedup"] - row["eager_ms"] / row["cpu_ms"]) < 1e-9
    assert abs(row["cpu_layer_norm_over_plain"] - row["cpu_ms"] / row["cpu_plain_ms"]) < 1e-9
    assert math.isnan(row["compiled_ms"])  # the tiny suite does not compile the baseline
    assert "cpu        ln_lstm    fwd+bwd  median speedup" in result.stdout


def test_lm_throughput_benchmark_trains_both_models_alike(tmp_path):
    """The language-model benchmark (benchmarks/lm_throughput.py), shrunk: both
    models start from the same weights and see the same batches, so after the
    same steps their validation perplexities agree; it reports the allocator
    setting it ran under."""
    from rnnkernels.benchmarks import lm_throughput

    out = tmp_path / "lm.json"
    assert lm_throughput.main(["--steps", "4", "--warmup", "1", "--max-chars", "30000", "--eval-tokens", "2000",
                               "--batch-size", "4", "--bptt", "16", "--embed", "16", "--hidden", "24",
                               "--keep-freed-memory", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["malloc"] == "keeps freed memory"
    assert result["ppl_relative_difference"] < 1e-3
    assert math.isfinite(result["rnnkernels_valid_ppl"]) and result["rnnkernels_valid_ppl"] > 1
    assert result["throughput_ratio"] > 0
