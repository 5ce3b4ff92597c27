"""Recording a gate: one function, :func:`run_recorded`, turns every assertion's record
(a plain dict, see docs/report-schema.md) into an entry of the active session's report,
whatever the outcome (pass, fail or error)."""

from __future__ import annotations

import time
from typing import Any, Callable

__all__ = ["base_record", "run_recorded", "model_info", "data_info", "cost_delta", "short"]


def base_record(kind: str, metric, **fields) -> dict:
    """The record before the check runs: an error until the check decides."""
    name = metric if isinstance(metric, str) else getattr(metric, "name", str(metric))
    return {"kind": kind, "metric": str(name), "verdict": "error", **fields}


def run_recorded(record: dict, run: Callable[[], Any]):
    """Run a check that fills ``record``; record it (an exception as an ``error`` record,
    then re-raised) in the active session's recorder, with the seconds it took."""
    __tracebackhide__ = True
    from .. import reporting
    from ..formatting import jsonable

    started = time.perf_counter()
    try:
        result = run()
    except BaseException as exc:
        record["verdict"] = "error"
        record["message"] = f"{type(exc).__name__}: {exc}"
        record["seconds"] = round(time.perf_counter() - started, 3)
        reporting.record_assertion(jsonable(record))
        raise
    record["seconds"] = round(time.perf_counter() - started, 3)
    reporting.record_assertion(jsonable(record))
    return result


def model_info(handle) -> dict:
    return {"name": handle.name, "source": handle.source, "fingerprint": handle.fingerprint}


def data_info(dataset) -> dict:
    return {"name": dataset.name, "source": dataset.source, "content_hash": dataset.content_hash, "n": len(dataset)}


def cost_delta(before: dict, after: dict) -> dict:
    return {k: round(after[k] - before.get(k, 0), 3) for k in after}


def short(text: Any, limit: int = 200) -> str:
    """One line of at most ``limit`` characters."""
    text = " ".join(str(text).split()) if text is not None else ""
    return text if len(text) <= limit else text[: limit - 3] + "..."
