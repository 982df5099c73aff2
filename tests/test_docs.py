"""The user guide's commands run (on tiny settings) so they cannot rot, the examples run, and the
README says what the issue found missing (issue 17: documentation)."""
import importlib.util
import os
import re
import shlex
import subprocess
import sys

import pytest

from rnnkernels import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUIDE = os.path.join(ROOT, "docs", "guide.md")

# Appended to the guide's commands (argparse: the last value wins), so each runs in seconds.
TRAIN_OVERRIDES = {
    "lm": ["--steps", "2", "--eval-every", "0", "--log-every", "1", "--bptt", "16", "--layers", "1", "--hidden", "16",
           "--embed", "16", "--batch-size", "4", "--max-chars", "20000", "--eval-tokens", "300", "--device", "cpu"],
    "seq2seq": ["--steps", "2", "--train-size", "200", "--eval-size", "20", "--hidden", "16", "--embed", "8",
                "--batch-size", "16", "--eval-every", "0", "--log-every", "1", "--device", "cpu"],
}
EXAMPLE_OVERRIDES = {"attention_decoder.py": ["--steps", "30"]}


def guide_commands():
    """Each command line of the guide's ```bash blocks, continuation lines joined, comments dropped."""
    text = open(GUIDE, encoding="utf-8").read()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(words)
    return commands


def _data_the_guide_names(folder):
    """Tiny stand-ins for the user's own files the guide's commands read."""
    (folder / "my-book.txt").write_text("It was a bright cold day in April, and the clocks were striking. " * 40)
    (folder / "wikitext").mkdir()
    for split in ("train", "valid", "test"):
        (folder / "wikitext" / f"{split}.txt").write_text("the cat sat on the mat .\nthe dog ran home .\n" * 30)
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    (folder / "pairs.tsv").write_text("".join(f"{n}\t{' '.join(words[int(d)] for d in str(n))}\n"
                                              for n in range(0, 400, 3)))
    (folder / "sources.txt").write_text("25 Nov 2026\n\n2049/12/31\n")


def _example(script: str):
    spec = importlib.util.spec_from_file_location(f"example_{script[:-3]}", os.path.join(ROOT, "examples", script))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_guide_has_commands_of_every_kind():
    kinds = {" ".join(words[:3]) if words[1] == "train" else " ".join(words[:2]) for words in guide_commands()}
    for kind in ("rnnkernels train lm", "rnnkernels train seq2seq", "rnnkernels generate", "rnnkernels translate",
                 "rnnkernels evaluate", "torchrun --nproc_per_node=2", "python examples/load_checkpoint.py"):
        assert kind in kinds, kind


def test_the_guide_commands_run(tmp_path, monkeypatch, capsys):
    _data_the_guide_names(tmp_path)
    monkeypatch.chdir(tmp_path)
    for words in guide_commands():
        shown = " ".join(words)
        if words[0] == "rnnkernels":
            argv = words[1:]
            if argv[0] == "train":
                argv = argv + TRAIN_OVERRIDES[argv[1]] + (["--steps", "4"] if "--resume" in argv else [])
            code = cli.main(argv)
            out, err = capsys.readouterr()
            assert code == 0, f"{shown}\n{out}\n{err}"
            if "--resume" in argv:
                assert "resumed from step 2" in out, out
        elif words[0] == "torchrun":  # the arguments after -m rnnkernels must parse (the run itself: test_train_cli)
            at = words.index("-m")
            assert words[at + 1] == "rnnkernels"
            rest = words[at + 2:]
            cli.build_parser().parse_args(rest + TRAIN_OVERRIDES[rest[1]])
        elif words[0] == "python" and words[1].startswith("examples/"):  # each script's main(argv), in process
            script = os.path.basename(words[1])
            code = _example(script).main([*words[2:], *EXAMPLE_OVERRIDES.get(script, [])])
            out, err = capsys.readouterr()
            assert code == 0, f"{shown}\n{out}\n{err}"
        else:
            pytest.fail(f"the guide's command {shown!r} has no rule in this test: add one, or move it out of a "
                        f"bash block")
    for written in ("runs/stdlib.pt", "runs/book.pt", "runs/wiki.pt", "runs/dates.pt", "runs/dates.best.pt",
                    "runs/pairs.pt", "runs/alignment-1.png", "runs/alignment-2.png", "runs/reverse-alignment.png",
                    "runs/example-alignment.png"):
        assert os.path.isfile(written), written


def test_every_example_is_in_the_guide_and_runs_as_a_script(tmp_path):
    """test_the_guide_commands_run runs every example the guide names; here: the guide names them all, and
    one runs as the script a user starts."""
    guide = open(GUIDE, encoding="utf-8").read()
    scripts = sorted(n for n in os.listdir(os.path.join(ROOT, "examples")) if n.endswith(".py"))
    assert scripts == ["attention_decoder.py", "drop_in_swap.py", "load_checkpoint.py", "padded_batches.py"]
    for script in scripts:
        assert f"examples/{script}" in guide, script
        source = open(os.path.join(ROOT, "examples", script)).read()
        assert source.startswith('"""') and 'if __name__ == "__main__":\n    raise SystemExit(main())' in source
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    result = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "padded_batches.py")], capture_output=True,
                            text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0 and "max |difference|" in result.stdout, result.stderr


def test_readme_points_to_everything_a_user_needs():
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    top = readme.split("## Usage")[0]
    assert "make bench" in top and "make test" in top  # the two setup commands stay at the top
    for needle in ("rnnkernels train", "generate", "translate", "rnnkernels evaluate", "make demo", "torchrun",
                   "rk.unconvert", "rk.nn.Attention", "rnnkernels.models", "docs/guide.md", "examples/",
                   "load_checkpoint", "a single text\nfile means a character model", "--version", "LICENSE"):
        assert needle in readme, needle


def test_every_readme_speed_figure_names_its_machine():
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = readme.split("## Measured speed")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    column = header.index("measured on")
    figures = rows[2:]
    assert len(figures) >= 5
    for row in figures:
        machine = row.strip("|").split("|")[column].strip()
        assert re.search(r"\d+-core .+(AVX|Zen|Xeon|EPYC|GPU|H100|A100)", machine) and "torch" in machine, row
