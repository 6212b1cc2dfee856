"""Learning-rate schedules that the kernels evaluate from an on-device clock.

Two audiences, two modules:

* the factories (``_factories.py``) build schedules the way optax does: each validates its
  arguments once and returns a :class:`Schedule`; composition (:func:`join`, :func:`product`,
  :func:`warmup`) replaces flags. With ``FusedScheduledAdam(params, lr=..., schedule=s)`` a
  schedule's value multiplies each param group's ``lr``;
* the encoding: the node classes (``_nodes.py``), each callable in Python floats (the reference
  the C++ and CUDA evaluators are tested against) and encodable into the flat float64 program
  the kernels read, in the layout one table gives each kind (``_layout.py``; the C++ side
  reports its own and a test compares them).

>>> from lrfused import schedules
>>> s = schedules.warmup_cosine(warmup_steps=2, decay_steps=10)
>>> [round(s(t), 4) for t in (0, 1, 2, 7, 12, 20)]
[0.0, 0.5, 1.0, 0.5, 0.0, 0.0]
>>> schedules.decode(s.encode())(7) == s(7)
True
"""

from ._factories import (
    constant,
    cosine_decay,
    cosine_warm_restarts,
    cyclic,
    exponential_decay,
    inverse_sqrt,
    join,
    lambda_schedule,
    linear,
    lr_range_exp,
    lr_range_linear,
    multistep_decay,
    one_cycle,
    polynomial_decay,
    product,
    step_decay,
    warmup,
    warmup_cosine,
    warmup_stable_decay,
)
from ._layout import (
    CYCLIC_EXP_RANGE,
    CYCLIC_TABLE_BY_CYCLE,
    CYCLIC_TABLE_BY_ITERATION,
    CYCLIC_TRIANGULAR,
    CYCLIC_TRIANGULAR2,
    KIND_CONSTANT,
    KIND_CONSTANT_FACTOR,
    KIND_COSINE,
    KIND_CYCLIC,
    KIND_EXP_RAMP,
    KIND_EXPONENTIAL,
    KIND_HELD,
    KIND_INVERSE_SQRT,
    KIND_LINEAR,
    KIND_LINEAR_RAMP,
    KIND_MULTI_STEP,
    KIND_ONE_CYCLE,
    KIND_ONE_MINUS_SQRT,
    KIND_POLYNOMIAL,
    KIND_PRODUCT,
    KIND_SEQUENTIAL,
    KIND_STEP,
    KIND_TABLE,
    KIND_WARM_RESTARTS,
    LAYOUTS,
    MAX_DEPTH,
)
from ._nodes import (
    NODE_CLASSES,
    Constant,
    ConstantFactor,
    Cosine,
    Cyclic,
    Exponential,
    ExpRamp,
    Held,
    InverseSqrt,
    Linear,
    LinearRamp,
    MultiStep,
    OneCycle,
    OneMinusSqrt,
    Polynomial,
    Product,
    Schedule,
    Sequential,
    Step,
    Tabulated,
    WarmRestarts,
    decode,
)

__all__ = [
    "Schedule", "Constant", "Tabulated", "Step", "MultiStep", "ConstantFactor", "Linear", "Exponential",
    "Polynomial", "Cosine", "WarmRestarts", "Cyclic", "OneCycle", "Sequential", "Product", "InverseSqrt",
    "OneMinusSqrt", "ExpRamp", "LinearRamp", "Held", "decode",
    "constant", "step_decay", "multistep_decay", "exponential_decay", "polynomial_decay", "linear",
    "cosine_decay", "cosine_warm_restarts", "cyclic", "one_cycle", "join", "product", "warmup",
    "warmup_cosine", "warmup_stable_decay", "inverse_sqrt", "lr_range_exp", "lr_range_linear",
    "lambda_schedule",
]
