"""The gates: every assertion of pytest-unlearn as one pipeline.

    check the arguments  (checks.py)
    -> measure            (measure.py: the only layer that touches models; a plain Measurement)
    -> verdict            (verdict.py: pure functions over arrays; no Suite, no torch, no pytest)
    -> record             (record.py: one function, run_recorded, for every gate)
    -> message            (messages.py and each gate's module)

One module per gate: forgotten, retained, regression, leak, robust, forget_quality.
Importing this package is light; the gates' names are resolved on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "assert_forgotten": "forgotten", "ForgettingResult": "forgotten",
    "assert_retained": "retained", "RetentionResult": "retained",
    "assert_no_regression": "regression", "RegressionResult": "regression",
    "assert_no_leak_found": "leak",
    "assert_metric_robust": "robust",
    "assert_forget_quality": "forget_quality",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_unlearn.gates' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
