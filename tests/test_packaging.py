"""Packaging (issue 17): declared dependencies that never replace the installed torch, one version,
a licence, `make bench` outside the tracked files, and the package working with Triton absent."""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

import rnnkernels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WITHOUT_TRITON = os.path.join(ROOT, "tests", "without_triton")


def _env(*front):
    paths = [*front, ROOT, os.environ.get("PYTHONPATH", "")]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p))


def test_pip_would_install_only_this_package_with_its_declared_requirements(tmp_path):
    """A dry run against what is installed (no index): torch >= 2.4 is satisfied by the torch here, CPU
    build or not, so nothing but rnnkernels would be installed; Triton and the rest are extras."""
    report = tmp_path / "report.json"
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--no-build-isolation",
                             "--quiet", "--report", str(report), "-e", ROOT], capture_output=True, text=True,
                            cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    [item] = json.loads(report.read_text())["install"]
    metadata = item["metadata"]
    assert metadata["name"] == "rnnkernels" and metadata["version"] == rnnkernels.__version__
    requires = metadata["requires_dist"]
    assert [r for r in requires if "extra ==" not in r] == ["torch>=2.4", "tqdm"]
    for extra, requirement in (("triton", "triton>=3.2"), ("plot", "matplotlib"), ("bleu", "sacrebleu>=2.0"),
                               ("tensorboard", "tensorboard")):
        assert f'{requirement}; extra == "{extra}"' in requires
    assert "MIT" in (metadata.get("license_expression") or metadata.get("license") or "")


def test_the_version_is_written_once():
    assert re.fullmatch(r"\d+\.\d+\.\d+", rnnkernels.__version__)
    hits = []
    for folder, _, files in os.walk(os.path.join(ROOT, "rnnkernels")):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                if re.search(r"__version__\s*=", open(path, encoding="utf-8").read()):
                    hits.append(os.path.relpath(path, ROOT))
    assert hits == [os.path.join("rnnkernels", "_version.py")]
    assert rnnkernels.__version__ not in open(os.path.join(ROOT, "setup.py")).read()


def test_license():
    text = open(os.path.join(ROOT, "LICENSE")).read()
    assert text.startswith("MIT License") and "THE SOFTWARE IS PROVIDED \"AS IS\"" in text


@pytest.mark.skipif(shutil.which("make") is None or not os.path.exists(os.path.join(ROOT, ".git")),
                    reason="needs make and a git checkout")
def test_make_bench_writes_outside_the_tracked_files():
    plan = subprocess.run(["make", "-n", "bench"], capture_output=True, text=True, cwd=ROOT, timeout=60).stdout
    [command] = [line for line in plan.splitlines() if "rnnkernels bench" in line]
    out_dir = command.split("--out-dir")[1].split()[0]
    assert out_dir == "build/bench"
    ignored = subprocess.run(["git", "check-ignore", "-q", os.path.join(out_dir, "bench_cpu_float32.md")], cwd=ROOT)
    assert ignored.returncode == 0, f"{out_dir} is not ignored by git"


WITHOUT_TRITON_SCRIPT = r"""
import importlib.util
import torch
import rnnkernels as rk
from rnnkernels.app import load_checkpoint  # noqa: F401  (the app imports too)

assert importlib.util.find_spec("triton") is None
assert "triton" in rk.backends.names() and "triton" not in rk.backends.available("cpu")
assert "not installed" in rk.backends.unavailable_reason("triton", "cpu")
torch.manual_seed(0)
ref = torch.nn.LSTM(5, 7, num_layers=2, bidirectional=True)
ours = rk.LSTM(5, 7, num_layers=2, bidirectional=True)
ours.load_state_dict(ref.state_dict())
x = torch.randn(6, 3, 5, requires_grad=True)
(a, _), (b, _) = ref(x), ours(x)
assert (a - b).abs().max() < 1e-5
grad_ref, = torch.autograd.grad(a.sum(), x)
grad_ours, = torch.autograd.grad(b.sum(), x)
assert (grad_ref - grad_ours).abs().max() < 1e-5
try:
    ours(x, backend="triton")
except rk.BackendUnavailableError as error:
    assert "Triton is not installed" in str(error)
else:
    raise AssertionError("the triton backend ran without triton")
compiled = torch.compile(ours, fullgraph=True, backend="eager")  # backend choice traces without importing triton
assert (compiled(x)[0] - b).abs().max() < 1e-6
q = torch.randn(2, 3, 4)
context, weights = rk.dot_product_attention(q, q, q, key_lengths=torch.tensor([3, 2]), return_weights=True)
assert weights.shape == (2, 3, 3)
print("library works without triton")

# the training tools too: a run, and --backend triton refused in one line
import sys
from rnnkernels import cli
folder = sys.argv[1]
assert cli.main(["train", "seq2seq", "--train-size", "200", "--eval-size", "10", "--hidden", "16", "--embed", "8",
                 "--batch-size", "16", "--steps", "1", "--device", "cpu", "--checkpoint", folder + "/x.pt"]) == 0
assert cli.main(["translate", "--checkpoint", folder + "/x.pt", "--backend", "triton", "25 Nov 2026"]) == 2
"""


def test_the_package_works_without_triton(tmp_path):
    env = _env(WITHOUT_TRITON)
    run = subprocess.run([sys.executable, "-c", WITHOUT_TRITON_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=300)
    assert run.returncode == 0 and "library works without triton" in run.stdout, run.stdout + run.stderr
    assert "backend auto (rnn cpu, attention cpu)" in run.stdout
    assert "rnnkernels translate: error: --backend triton: Triton is not installed" in run.stderr
    # the Triton test modules skip (not error) where Triton is missing, so `make test` passes there too
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                            os.path.join(ROOT, "tests", "test_triton_rnn.py"),
                            os.path.join(ROOT, "tests", "test_triton_attention.py")],
                           capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    # exit code 5: no test ran (both modules skip whole); an import error would be 2
    assert tests.returncode == 5 and "2 skipped" in tests.stdout and "error" not in tests.stdout, tests.stdout
    assert "could not import 'triton'" in tests.stdout
