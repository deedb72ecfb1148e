"""Unlearning methods, registered by name in METHODS (one module per method).

Adding a method = one module that calls `register(Method(...))` + one import line below.
"""

from e2urec.methods import (  # noqa: F401  (each import registers its method)
    apa,
    bad_t,
    e2urec,
    gradascent,
    influence,
    neggrad,
    npo,
    receraser,
    retrain,
    sisa,
)
from e2urec.methods.base import (
    METHODS,
    Method,
    TrainParams,
    UnlearnContext,
    check_params,
    param_defaults,
)

__all__ = ["METHODS", "Method", "TrainParams", "UnlearnContext", "check_params", "param_defaults"]
