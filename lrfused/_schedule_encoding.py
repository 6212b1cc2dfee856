"""The schedule encoding, for lrfused's own modules and tests (not the user's API, which is
:mod:`lrfused.schedules`): the kind numbers and node layouts (``schedules/_layout.py``), the
CyclicLR modes, the depth limit, the HELD node, and :func:`decode`, which turns a program back
into nodes (the reference op's evaluator). ``lrfused::schedule_encoding`` reports the C++ side's
table, and the tests compare the two."""

from .schedules._layout import (  # noqa: F401
    CYCLIC_EXP_RANGE,
    CYCLIC_MODE_COUNT,
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
    NodeLayout,
    encoding_rows,
)
from .schedules._nodes import NODE_CLASSES, Held, decode  # noqa: F401
