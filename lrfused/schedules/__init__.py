"""Learning-rate schedules that the kernels evaluate from an on-device clock.

Two audiences, two modules:

* the factories (``_factories.py``) build schedules the way optax does: each validates its
  arguments once and returns a :class:`Schedule`; composition (:func:`join`, :func:`product`,
  :func:`warmup`) replaces flags. With ``FusedScheduledAdam(params, lr=..., schedule=s)`` a
  schedule's value multiplies each param group's ``lr``;
* the node classes (``_nodes.py``), each callable in Python floats (the reference the C++ and
  CUDA evaluators are tested against) and encodable into the flat float64 program the kernels
  read. The encoding itself (kind numbers, layouts, decoding) is lrfused's own business
  (``lrfused/_schedule_encoding.py``), not part of this module's interface.

>>> from lrfused import schedules
>>> s = schedules.warmup_cosine(warmup_steps=2, decay_steps=10)
>>> [round(s(t), 4) for t in (0, 1, 2, 7, 12, 20)]
[0.0, 0.5, 1.0, 0.5, 0.0, 0.0]

Differences from optax. The factories are named as optax names its schedules, but they follow
torch's conventions where the two differ: a value is a factor of the group's lr (so
``init_value`` defaults to 1.0 and comes last), and a decay counts one step per scheduler step.
Each row is checked against optax's formula by ``tests/test_schedules.py``:

* ``warmup_cosine(w, d, peak_value, end_value, start_value)`` is optax's
  ``warmup_cosine_decay_schedule(start_value, peak_value, w, w + d, end_value)``: lrfused's
  ``decay_steps`` counts the cosine alone, optax's the warm-up too;
* ``exponential_decay(gamma, init_value)`` is optax's
  ``exponential_decay(init_value, transition_steps=1, decay_rate=gamma)``: one factor per step,
  as torch's ExponentialLR;
* ``step_decay(step_size, gamma, init_value)`` is optax's
  ``exponential_decay(init_value, step_size, gamma, staircase=True)``;
* ``cosine_decay(decay_steps, alpha, init_value)`` is optax's
  ``cosine_decay_schedule(init_value, decay_steps, alpha)``;
* ``polynomial_decay(total_steps, power, init_value, end_value)`` is optax's
  ``polynomial_schedule(init_value, end_value, power, total_steps)``;
* ``linear(start_value, end_value, total_steps)`` is optax's
  ``linear_schedule(start_value, end_value, total_steps)``;
* ``join(schedules, boundaries)`` is optax's ``join_schedules(schedules, boundaries)``;
* ``one_cycle(total_steps, max_value, pct_start, ...)`` is torch's OneCycleLR, which peaks at
  step ``pct_start * total_steps - 1``; optax's ``cosine_onecycle_schedule`` peaks one step later.
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
from ._nodes import (
    Constant,
    ConstantFactor,
    Cosine,
    Cyclic,
    Exponential,
    ExpRamp,
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
)

__all__ = [
    "Schedule",
    "Constant",
    "Tabulated",
    "Step",
    "MultiStep",
    "ConstantFactor",
    "Linear",
    "Exponential",
    "Polynomial",
    "Cosine",
    "WarmRestarts",
    "Cyclic",
    "OneCycle",
    "Sequential",
    "Product",
    "InverseSqrt",
    "OneMinusSqrt",
    "ExpRamp",
    "LinearRamp",
    "constant",
    "step_decay",
    "multistep_decay",
    "exponential_decay",
    "polynomial_decay",
    "linear",
    "cosine_decay",
    "cosine_warm_restarts",
    "cyclic",
    "one_cycle",
    "join",
    "product",
    "warmup",
    "warmup_cosine",
    "warmup_stable_decay",
    "inverse_sqrt",
    "lr_range_exp",
    "lr_range_linear",
    "lambda_schedule",
]
