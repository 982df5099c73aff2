"""Loads the compiled extension rnnkernels._C (which registers torch.ops.rnnkernels)."""
import functools
from typing import Optional


@functools.lru_cache(maxsize=None)
def load_error() -> Optional[str]:
    """None when rnnkernels._C is loaded, else why it is not (for error messages)."""
    try:
        from . import _C  # noqa: F401  (importing it registers the ops)
    except ImportError as exc:
        return (
            f"the compiled extension rnnkernels._C is not built ({exc}); "
            "build it with `pip install --no-build-isolation -e .` or `make install`"
        )
    return None


def built_with(part: str) -> bool:
    """Whether the loaded extension has `part` ("cpu" or "cuda")."""
    if load_error() is not None:
        return False
    import torch

    return part in torch.ops.rnnkernels.build_info().split(",")
