"""pytest-unlearn: LLM-unlearning guarantees as pytest tests.

Importing this package is cheap: the public names below are resolved lazily, so
the pytest plugin (``pytest_unlearn.plugin``) never imports torch or transformers
unless a test actually uses one of its fixtures or assertions.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "UnlearnError": "errors",
    "ConfigError": "errors",
    "DataError": "errors",
    "ModelLoadError": "errors",
    "ModelMismatchError": "errors",
    "MetricError": "errors",
    "AttackError": "errors",
    "UnknownNameError": "errors",
    "RegistrationError": "errors",
    "register_metric": "metrics",
    "register_attack": "attacks",
    "UnlearningAssertionError": "errors",
    "load_model": "models",
    "ModelHandle": "models",
    "load_dataset": "data",
    "Dataset": "data",
    "PromptFormat": "prompts",
    "Settings": "config",
    "Suite": "suite",
    "calibrate": "calibration",
    "CalibrationResult": "calibration",
    "assert_forgotten": "assertions",
    "assert_retained": "assertions",
    "ForgettingResult": "assertions",
    "RetentionResult": "assertions",
    "UnlearnWarning": "assertions",
    "audit_metrics": "audit",
    "assert_metric_robust": "audit",
    "AuditResult": "audit",
    "compare_methods": "method_comparison",
    "ComparisonResult": "method_comparison",
    "assert_no_regression": "baselines",
    "RegressionResult": "baselines",
    "BaselineError": "baselines",
    "BaselineStore": "baselines",
    "find_leak": "leak_search",
    "assert_no_leak_found": "leak_search",
    "LeakSearchResult": "leak_search",
    "assert_forget_quality": "tofu",
    "tofu_forget_quality": "tofu",
    "tofu_model_utility": "tofu",
    "ForgetQualityResult": "tofu",
    "ModelUtility": "tofu",
    "muse_verbmem": "muse",
    "muse_knowmem": "muse",
    "muse_privleak": "muse",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_unlearn' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))


__all__ = sorted(_EXPORTS) + ["__version__"]
