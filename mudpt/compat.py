"""Import-time compatibility for a CPU torch next to a CUDA-built torchvision wheel.

The PyPI torchvision wheel registers its compiled operators against a CUDA torch. Next to a CPU torch
its `_meta_registrations` fail with `RuntimeError: operator torchvision::nms does not exist`, and
open_clip (which imports torchvision) fails with it. The pure-Python parts we use (transforms) work
once the operator *schemas* exist, so on exactly that error we define the missing schemas and retry.
Where torch and torchvision match, the first import succeeds and nothing here runs.
"""
from __future__ import annotations

import re
import sys

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library = None  # must stay referenced, or torch drops the definitions
applied = False


def _forget_partial_import() -> None:
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]


def ensure_torchvision() -> None:
    global _library, applied
    if "torchvision" in sys.modules and not applied:
        return
    for _ in range(len(_SCHEMAS) + 1):
        try:
            import torchvision  # noqa: F401

            return
        except RuntimeError as e:
            m = re.search(r"operator torchvision::(\w+) does not exist", str(e))
            if not m or m.group(1) not in _SCHEMAS:
                raise
            import torch

            if _library is None:
                _library = torch.library.Library("torchvision", "DEF")
            _library.define(_SCHEMAS[m.group(1)])
            applied = True
            _forget_partial_import()
    import torchvision  # noqa: F401  (raises the real error if the schemas did not help)


ensure_torchvision()
