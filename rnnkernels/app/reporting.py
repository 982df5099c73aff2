"""What a training run shows and records: plain log lines (and a progress bar on a terminal), a
metrics file (JSON lines, or CSV by its extension), TensorBoard when asked for."""
import csv
import io
import json
import math
import os
import sys
from typing import Dict, List, Optional

from .errors import UserError
from .files import write_text


def _clean(value):
    """JSON has no NaN or Inf: they are written as null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


class MetricsLog:
    """Every record of a run (train intervals, validations, the test), kept in memory and in `path`.

    A record is flat: {"step": 100, "split": "train", "loss": ..., ...}. A `.csv` path gets CSV
    (rewritten whole, its columns the union of the keys), any other JSON lines (appended). A
    resumed run keeps the records up to the step it resumes from; a new run starts the file afresh."""

    def __init__(self, path: Optional[str], resume_step: Optional[int] = None):
        self.path = path
        self.csv = path is not None and path.lower().endswith(".csv")
        self.records: List[Dict] = []
        if path is not None and resume_step is not None and os.path.isfile(path):
            self.records = [r for r in self._read(path) if isinstance(r.get("step"), (int, float))
                            and r["step"] <= resume_step]
        if path is not None:
            self._rewrite()

    def _read(self, path: str) -> List[Dict]:
        with open(path, newline="") as f:
            if self.csv:
                return [{k: _number(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]
            records = []
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:  # a line cut short by a killed run
                    continue
                if isinstance(record, dict):
                    records.append(record)
            return records

    def _rewrite(self) -> None:
        if self.csv and self.records:
            columns = list(dict.fromkeys(k for r in self.records for k in r))
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, columns)
            writer.writeheader()
            writer.writerows({k: "" if _clean(v) is None else v for k, v in r.items()} for r in self.records)
            text = buffer.getvalue()
        elif self.csv:
            text = ""
        else:
            text = "".join(json.dumps({k: _clean(v) for k, v in r.items()}) + "\n" for r in self.records)
        write_text(self.path, text)

    def add(self, record: Dict) -> None:
        self.records.append(record)
        if self.path is None:
            return
        if self.csv:
            self._rewrite()
        else:
            with open(self.path, "a") as f:
                f.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")


def _number(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


class TensorBoard:
    """Scalars "<split>/<name>" per step, through torch.utils.tensorboard (needs the tensorboard package)."""

    def __init__(self, folder: str):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("--tensorboard needs the tensorboard package (pip install tensorboard)") from None
        self.writer = SummaryWriter(folder)

    def add(self, record: Dict) -> None:
        for name, value in record.items():
            if name not in ("step", "split") and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"{record['split']}/{name}", value, record["step"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class Console:
    """Lines on stdout, one per event, flushed (readable in a log file or a pipe); a tqdm bar on
    stderr only when stderr is a terminal and the bar is wanted."""

    def __init__(self, total: int, initial: int, bar: bool):
        self.bar = None
        if bar and sys.stderr.isatty():
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr)

    def say(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stdout)
        else:
            print(line, file=sys.stdout)
        sys.stdout.flush()

    def advance(self, **postfix) -> None:
        if self.bar is not None:
            self.bar.set_postfix(**postfix, refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


_FORMATS = {"lr": "{:.3g}", "tokens_per_s": "{:,.0f}", "elapsed_s": "{:.1f}", "ppl": "{:.3f}", "forcing": "{:.3f}",
            "bleu": "{:.2f}"}


def format_metrics(values: Dict[str, float]) -> str:
    """'loss 1.2346  ppl 3.437  accuracy 0.5120  lr 0.003' (the names as recorded, so a log greps like its file)."""
    parts = []
    for name, value in values.items():
        if isinstance(value, float) and math.isfinite(value):
            text = _FORMATS.get(name, "{:.4f}").format(value)
        else:
            text = str(value)
        parts.append(f"{name} {text}")
    return "  ".join(parts)
