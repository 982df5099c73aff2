"""The checkpoint format of the training CLI, and the public loader.

A checkpoint is a dict saved with torch.save and read with
torch.load(weights_only=True), so opening one never runs code from it:

    format     "rnnkernels-checkpoint"
    version    the rnnkernels version that wrote it
    kind       "lm" (RNNLanguageModel) or "seq2seq" (Seq2Seq)
    config     the model's constructor arguments
    vocabs     {"vocab": [...]} or {"src_vocab": [...], "tgt_vocab": [...]}, token strings by id
    level      "char" or "word" (lm); src_level and tgt_level (seq2seq)
    model      the state_dict
    optimizer, lr_schedule, rng, step, best, metrics, options
               the training state that --resume continues from; options are
               the training command's settings

Everything read back is checked (types, sizes, vocabularies that fit the
model, finite weights) and a checkpoint that fails is refused with a one-line
UserError, never half-used.

    from rnnkernels.app import load_checkpoint
    ck = load_checkpoint("runs/dates.pt")
    ck.translate(["25 Nov 2026"])[0][0].text      # '2026-11-25'
"""
import inspect
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from .._version import __version__
from ..data import LEVELS, DataError, Vocab
from ..models import RNNLanguageModel, Seq2Seq
from ..models.common import CELLS
from ..nn.attention import Attention
from .errors import UserError
from .files import atomic_write

CHECKPOINT_FORMAT = "rnnkernels-checkpoint"
MODELS = {"lm": RNNLanguageModel, "seq2seq": Seq2Seq}
VOCABS = {"lm": {"vocab": "vocab_size"}, "seq2seq": {"src_vocab": "src_vocab_size", "tgt_vocab": "tgt_vocab_size"}}
_SIZES = ("vocab_size", "src_vocab_size", "tgt_vocab_size", "embed_size", "hidden_size", "num_layers")


def save_checkpoint(path: str, payload: dict) -> None:
    """Atomic: a temporary file in the same folder, then a rename (OSError if it cannot be written)."""
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_config(kind: str, config) -> None:
    """UserError unless `config` is a valid constructor configuration for a `kind` model."""
    if not isinstance(config, dict):
        raise UserError(f"the model configuration must be a dict, got {type(config).__name__}")
    allowed = set(inspect.signature(MODELS[kind]).parameters) - {"backend"}
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise UserError(f"unknown model configuration key(s) {', '.join(unknown)}")
    for key, value in config.items():
        if key in _SIZES and not (_is_int(value) and value >= 1):
            raise UserError(f"model configuration {key} must be an integer >= 1, got {value!r}")
        if key == "dropout" and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                     and 0.0 <= value < 1.0):
            raise UserError(f"model configuration dropout must lie in [0, 1), got {value!r}")
        if key == "cell" and value not in CELLS:
            raise UserError(f"model configuration cell must be one of {', '.join(sorted(CELLS))}, got {value!r}")
        if key == "attention" and value is not None and value not in Attention.SCORES:
            raise UserError(f"model configuration attention must be None or one of {Attention.SCORES}, got {value!r}")
        if key == "tie_weights" and not isinstance(value, bool):
            raise UserError(f"model configuration tie_weights must be true or false, got {value!r}")


def build_model(kind: str, config: dict) -> nn.Module:
    check_config(kind, config)
    try:
        return MODELS[kind](**config)
    except (TypeError, ValueError, RuntimeError) as error:
        raise UserError(f"bad model configuration: {str(error).splitlines()[0]}") from None


def read_checkpoint(path: str, kind: Optional[str] = None) -> dict:
    """The checkpoint's dict, checked through; UserError if it is missing, unreadable or inconsistent."""
    if not os.path.exists(path):
        raise UserError(f"checkpoint {path} does not exist")
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path} is not a regular file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any unreadable or unsafe file is a user error here
        raise UserError(f"{path} is not a readable rnnkernels checkpoint ({type(error).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not an rnnkernels checkpoint")
    found = payload.get("kind")
    if found not in MODELS:
        raise UserError(f"checkpoint {path}: kind must be one of {', '.join(MODELS)}, got {found!r}")
    if kind is not None and found != kind:
        raise UserError(f"checkpoint {path} holds a {found} model, not a {kind} model")
    try:
        _check_payload(payload)
    except UserError as error:
        raise UserError(f"checkpoint {path} is damaged: {error}") from None
    return payload


def _check_payload(payload: dict) -> None:
    kind, config = payload["kind"], payload.get("config")
    check_config(kind, config)
    vocabs = payload.get("vocabs")
    if not isinstance(vocabs, dict):
        raise UserError("it holds no vocabularies")
    for name, size_key in VOCABS[kind].items():
        if not isinstance(vocabs.get(name), list):
            raise UserError(f"vocabulary {name} is missing")
        try:
            Vocab(vocabs[name])
        except DataError as error:
            raise UserError(f"vocabulary {name}: {error}") from None
        if len(vocabs[name]) != config.get(size_key):
            raise UserError(f"vocabulary {name} has {len(vocabs[name])} tokens, the model's "
                            f"{size_key} is {config.get(size_key)!r}")
    for name in levels_of(payload).values():
        if name not in LEVELS:
            raise UserError(f"level must be one of {', '.join(LEVELS)}, got {name!r}")
    state = payload.get("model")
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise UserError("its weights are not a state_dict of tensors")
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise UserError(f"weight {name} holds NaN or Inf")
    step = payload.get("step", 0)
    if not (_is_int(step) and step >= 0):
        raise UserError(f"step must be an integer >= 0, got {step!r}")


def levels_of(payload: dict) -> Dict[str, str]:
    """{"level": ...} (lm) or {"src_level": ..., "tgt_level": ...} (seq2seq); older checkpoints hold one level."""
    if payload["kind"] == "lm":
        return {"level": payload.get("level")}
    both = payload.get("level")
    return {"src_level": payload.get("src_level", both), "tgt_level": payload.get("tgt_level", both)}


def model_from_checkpoint(payload: dict, device="cpu", dtype: torch.dtype = torch.float32) -> nn.Module:
    """The checked checkpoint's model with its weights, in eval mode, on `device` in `dtype`."""
    model = build_model(payload["kind"], payload["config"])
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as error:  # torch's message: a header line, then one line per problem
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = "; ".join(lines[1:3]) if len(lines) > 1 else lines[0] if lines else type(error).__name__
        raise UserError(f"checkpoint weights do not fit its configuration: {detail}") from None
    return model.to(device, dtype).eval()


def training_payload(*, kind: str, config: dict, vocabs: Dict[str, List[str]], levels: Dict[str, str],
                     model: nn.Module, optimizer: torch.optim.Optimizer, lr_schedule: dict, step: int,
                     best: Optional[dict], metrics: dict, options: dict) -> dict:
    return {"format": CHECKPOINT_FORMAT, "version": __version__, "kind": kind, "config": config, "vocabs": vocabs,
            **levels, "model": model.state_dict(), "optimizer": optimizer.state_dict(), "lr_schedule": lr_schedule,
            "step": step, "rng": torch.get_rng_state(), "best": best, "metrics": dict(metrics), "options": options}


@dataclass
class Checkpoint:
    """A trained model and what it needs to read and write text.

    kind "lm": vocab and level are set; kind "seq2seq": src_vocab, tgt_vocab,
    src_level and tgt_level. metrics are the last ones the training run
    recorded; options the training command's settings."""
    path: str
    kind: str
    model: nn.Module
    config: Dict[str, Any]
    step: int
    vocab: Optional[Vocab] = None
    level: Optional[str] = None
    src_vocab: Optional[Vocab] = None
    tgt_vocab: Optional[Vocab] = None
    src_level: Optional[str] = None
    tgt_level: Optional[str] = None
    metrics: Dict[str, float] = field(default_factory=dict)
    options: Dict[str, Any] = field(default_factory=dict)

    def translate(self, texts: List[str], **kwargs):
        """rnnkernels.app.inference.translate(self, texts, ...): n-best Translations per text."""
        from .inference import translate

        return translate(self, texts, **kwargs)

    def generate(self, prompt: str, **kwargs) -> str:
        """rnnkernels.app.inference.generate(self, prompt, ...): the prompt and its continuation."""
        from .inference import generate

        return generate(self, prompt, **kwargs)


def load_checkpoint(path: str, device="cpu", dtype: torch.dtype = torch.float32,
                    kind: Optional[str] = None) -> Checkpoint:
    """Reads a checkpoint written by `rnnkernels train`: its model (eval mode, on `device`), vocabularies and
    levels. Raises UserError (a ValueError) for a missing, damaged or foreign file, or one of another kind."""
    payload = read_checkpoint(path, kind)
    vocabs = {name: Vocab(itos) for name, itos in payload["vocabs"].items() if name in VOCABS[payload["kind"]]}
    options = payload.get("options") if isinstance(payload.get("options"), dict) else {}
    metrics = payload.get("metrics") if isinstance(payload.get("metrics"), dict) else {}
    return Checkpoint(path=path, kind=payload["kind"], model=model_from_checkpoint(payload, device, dtype),
                      config=dict(payload["config"]), step=int(payload.get("step", 0)), **vocabs,
                      **levels_of(payload), metrics={k: v for k, v in metrics.items()
                                                     if isinstance(v, (int, float)) and math.isfinite(v)},
                      options=options)
