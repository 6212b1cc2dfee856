"""lrfused: Adam/AdamW, SGD, RMSprop and Adagrad fused with their learning-rate schedule.

One kernel launch per optimizer+scheduler step, evaluated from an on-device clock: no host sync,
CUDA-graph capturable, no recompilation under torch.compile when the lr changes.
"""

from . import lr_scheduler, schedules
from ._ops import has_cuda_kernels, has_kernels
from ._version import __version__
from .finder import LRFinder
from .optim import (
    FusedScheduledAdagrad,
    FusedScheduledAdam,
    FusedScheduledAdamW,
    FusedScheduledRMSprop,
    FusedScheduledSGD,
)

__all__ = [
    "FusedScheduledAdam",
    "FusedScheduledAdamW",
    "FusedScheduledSGD",
    "FusedScheduledRMSprop",
    "FusedScheduledAdagrad",
    "LRFinder",
    "schedules",
    "lr_scheduler",
    "has_kernels",
    "has_cuda_kernels",
    "__version__",
]
