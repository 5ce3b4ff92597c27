"""Running batches with back-off on out-of-memory errors.

:func:`run_batches` feeds a list of index batches (as made by
:func:`~pytest_unlearn.forward.length_sorted_batches`) to a callable one at a time.  When a
batch runs out of device memory (``torch.OutOfMemoryError``, ``torch.cuda.OutOfMemoryError``,
or a ``RuntimeError`` whose message says "out of memory"), the cached device memory is
released, the batch size is halved and the samples of that batch are run again in smaller
batches; every later batch of the same call is split to the smaller size too (batches come in
order of length, so later ones need at least as much memory).  A sample that does not fit
even alone raises :class:`ModelDoesNotFitError`.

The size that worked is remembered per workload (teacher-forced pass or generation), model
(class, parameter count, dtype), device and padded-length bucket (the next power of two of
the longest sequence), for the life of the process: a later call starts at the remembered
size and does not run out of memory again.  A size remembered for a bucket also applies to
longer sequences.  The memo only ever lowers a batch size; without an out-of-memory error,
batches are run exactly as given.

The callable must not keep partial results of a batch that raised (both users write their
results only after the whole batch succeeded).
"""

from __future__ import annotations

import gc
import threading
from typing import Callable, Hashable, Iterable, Sequence

from .errors import ConfigError

#: (workload key, length bucket) -> largest batch size known to work after an out-of-memory error.
_MEMO: dict[tuple[Hashable, int], int] = {}
_LOCK = threading.Lock()


class ModelDoesNotFitError(ConfigError):
    """One sample alone runs out of device memory: the model and its activations do not fit."""


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an out-of-memory error from torch (CUDA or another backend)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        torch = None
    if torch is not None:
        types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                                  getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None))
                      if isinstance(t, type))
        if types and isinstance(exc, types):
            return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def free_memory(device=None) -> None:
    """Collect garbage and release the memory cached by torch's CUDA allocator."""
    gc.collect()
    import torch

    kind = getattr(device, "type", str(device) if device is not None else "")
    if (kind == "cuda" or device is None) and torch.cuda.is_available():
        torch.cuda.empty_cache()


def length_bucket(width: int) -> int:
    """The next power of two of ``width`` (at least 1)."""
    return 1 << max(0, int(width) - 1).bit_length()


def workload_key(kind: str, model, device) -> tuple:
    """Memo key of a workload: its kind, the model's class, size and dtype, and the device
    (the input device, and the device map when the model is spread over several devices)."""
    n_params, dtype = 0, None
    for p in model.parameters():
        n_params += p.numel()
        if dtype is None and p.is_floating_point():
            dtype = p.dtype
    device_map = getattr(model, "hf_device_map", None)
    placement = tuple(sorted({str(v) for v in device_map.values()})) if isinstance(device_map, dict) else ()
    return (kind, type(model).__name__, n_params, str(dtype), str(device), placement)


def remembered_size(key: Hashable, width: int) -> int | None:
    """The batch size remembered for sequences of ``width`` tokens (``None``: no limit known)."""
    bucket = length_bucket(width)
    with _LOCK:
        sizes = [s for (k, b), s in _MEMO.items() if k == key and b <= bucket]
    return min(sizes) if sizes else None


def remember_size(key: Hashable, width: int, size: int) -> None:
    bucket = length_bucket(width)
    with _LOCK:
        old = _MEMO.get((key, bucket))
        _MEMO[(key, bucket)] = size if old is None else min(old, size)


def clear_memo() -> None:
    """Forget every remembered batch size."""
    with _LOCK:
        _MEMO.clear()


def run_batches(batches: Iterable[Sequence[int]], work: Callable[[list[int]], None], *,
                widths: Sequence[int], device=None, key: Hashable | None = None,
                what: str = "the forward pass") -> None:
    """Call ``work(idx)`` for every index batch, halving the batch size on out-of-memory errors.

    ``widths[i]`` is the number of tokens sample ``i`` occupies (it picks the memo's length
    bucket and is named in the error); ``key`` (see :func:`workload_key`) turns the memo on;
    ``device`` is the device whose cache is released after an out-of-memory error.
    """
    limit: int | None = None  # the size this call backed off to, applied to all later batches
    for batch in batches:
        batch = list(batch)
        width = max((widths[i] for i in batch), default=0)
        size = len(batch)
        if limit is not None:
            size = min(size, limit)
        if key is not None:
            known = remembered_size(key, width)
            if known is not None:
                size = min(size, known)
        size = max(size, 1)
        pos = 0
        while pos < len(batch):
            chunk = batch[pos:pos + size]
            failure = None
            try:
                work(chunk)
            except Exception as exc:  # noqa: BLE001 - re-raised unless out of memory
                if not is_out_of_memory(exc):
                    raise
                failure = _first_line(exc)
            # out of the except block: the traceback (and the tensors its frames hold) is gone
            if failure is None:
                pos += len(chunk)
                continue
            free_memory(device)
            if len(chunk) == 1:
                raise _does_not_fit(chunk, widths, device, what, failure)
            size = len(chunk) // 2
            limit = size if limit is None else min(limit, size)
            if key is not None:
                remember_size(key, max(widths[i] for i in chunk), size)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def _does_not_fit(chunk: list[int], widths: Sequence[int], device, what: str,
                  failure: str) -> ModelDoesNotFitError:
    n = len(widths)
    longest = max(widths) if n else 0
    where = f" on {device}" if device is not None else ""
    return ModelDoesNotFitError(
        f"the model does not fit in memory{where}: {what} ran out of memory for a single sample "
        f"(sample {chunk[0]} of {n}, {widths[chunk[0]]} tokens; the longest of the {n} samples has "
        f"{longest} tokens) even at batch size 1 ({failure}). Load the model in a smaller dtype "
        "(unlearn_dtype / --unlearn-dtype bfloat16 or float16), spread it over several GPUs with CPU "
        "offload if needed (unlearn_device / --unlearn-device sharded, i.e. device_map='auto'), free "
        "the device of other processes (fewer pytest-xdist workers per GPU), or use shorter samples")
