"""Evaluation sharded across processes with ``torch.distributed`` (``torchrun``, ``accelerate launch``).

Every rank runs the same pytest session (the same tests, in the same order, on the same
data); only the forward work is split.  A teacher-forced pass or a batched generation
groups its samples into length-sorted batches (:func:`~pytest_unlearn.forward.length_sorted_batches`);
batch ``b`` goes to rank ``b % world_size``, *whole*, and each rank runs the ordinary
single-process code on its samples listed in sorted-batch order with the same batch size.
Re-batching that list gives back exactly the batches of a single-process run (same samples,
same padding, same ``logits_to_keep``; :func:`rank_batches`), so every per-sample result is
bit for bit what one process computes.  The per-sample results are then all-gathered, so
every rank holds the full, identical result and reaches the same verdicts; rank 0 alone
writes the report files and prints the summary.

When sharding is on (:func:`active`):

* a default process group of more than one process is initialised, by the user's code or by
  :func:`setup`, which the plugin calls when a test first needs the suite and which
  initialises one (backend gloo) from the environment of ``torchrun`` / ``accelerate launch``
  (``WORLD_SIZE`` > 1, ``RANK``, ``MASTER_ADDR``, ``MASTER_PORT``);
* ``PYTEST_UNLEARN_DISTRIBUTED`` is not ``0`` (which turns sharding off: every rank then
  computes everything itself), and no :func:`replicated` block is open.

The collectives here move Python objects (per-token statistics, generated text, cache
entries) and, for the weight attacks, the attacked weights (:func:`from_rank0`: ``relearn``
trains and ``quantize`` rounds on rank 0 alone, and every rank receives rank 0's weights, so
all ranks score one and the same attacked model).  They always run over gloo (a gloo side
group is created when the default group uses another backend such as NCCL); the models stay
on each rank's device, and broadcast weights pass through CPU memory.  Every collective
is an ``all_gather_object`` carrying a tag (what it is for, and the content hash of its
inputs): ranks that call them out of step get a :class:`DistributedError` naming what each
rank was doing, never a silent mismatch.  An exception inside a rank's share of the work is
gathered too and raised on every rank, so no rank is left waiting.

The on-disk result cache is shared: under sharding, rank 0 alone reads and writes it, and
what rank 0 read reaches the others through a collective (:class:`SharedCache`), so a hit on
rank 0 is a hit everywhere and the ranks never diverge on it.

Importing this module imports neither torch nor numpy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pickle
import sys
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from .errors import UnlearnError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from .cache import ResultCache
    from .config import Settings

__all__ = ["DistributedError", "SWITCH_ENV", "SharedCache", "active", "exchange", "from_rank0", "is_main_process",
           "launched", "leave_report_files_to_rank0", "rank", "rank_batches", "rank_device", "replicated",
           "run_sharded", "session_settings", "setup", "shared_cache", "teardown", "world_size"]

#: ``PYTEST_UNLEARN_DISTRIBUTED=0`` turns sharding off (every rank then computes everything).
SWITCH_ENV = "PYTEST_UNLEARN_DISTRIBUTED"
_OFF = {"0", "false", "no", "off"}
_LAUNCH_VARS = ("RANK", "MASTER_ADDR", "MASTER_PORT")


class DistributedError(UnlearnError):
    """The ranks of a sharded evaluation went out of step, or another rank failed."""


_state: dict[str, Any] = {"owned": False, "group": None, "group_of": None}
_local = threading.local()


# ---------------------------------------------------------------- where am I

def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def _switched_off() -> bool:
    return os.environ.get(SWITCH_ENV, "").strip().lower() in _OFF


def launched() -> bool:
    """Whether this process is one of several started by ``torchrun`` / ``accelerate launch``
    (their environment variables are set and ``WORLD_SIZE`` > 1).  Never in a pytest-xdist
    worker: xdist workers share their launcher's rank."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return False
    return _env_int("WORLD_SIZE", 1) > 1 and all(v in os.environ for v in _LAUNCH_VARS)


def _dist():
    """``torch.distributed`` if torch is already imported and built with it (never imports torch)."""
    if "torch" not in sys.modules:
        return None
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - a torch without distributed support
        return None
    return dist if dist.is_available() else None


def _initialised():
    dist = _dist()
    return dist if dist is not None and dist.is_initialized() else None


def rank() -> int:
    """This process's rank: that of the initialised process group, else ``RANK`` under a launcher, else 0."""
    dist = _initialised()
    if dist is not None:
        return dist.get_rank()
    return _env_int("RANK", 0) if launched() else 0


def world_size() -> int:
    """The number of processes: that of the initialised process group, else ``WORLD_SIZE`` under a
    launcher, else 1."""
    dist = _initialised()
    if dist is not None:
        return dist.get_world_size()
    return _env_int("WORLD_SIZE", 1) if launched() else 1


def is_main_process() -> bool:
    """Whether this process writes the report files and prints the summary (rank 0)."""
    return rank() == 0


def active() -> bool:
    """Whether scoring is sharded now (see the module docstring)."""
    if getattr(_local, "replicated", 0) or _switched_off():
        return False
    dist = _initialised()
    return dist is not None and dist.get_world_size() > 1


@contextlib.contextmanager
def replicated() -> Iterator[None]:
    """Inside this block every rank computes everything itself (no sharding, no collectives, and
    each rank uses the result cache as a single process would).  Every rank must enter it
    at the same point, or none."""
    _local.replicated = getattr(_local, "replicated", 0) + 1
    try:
        yield
    finally:
        _local.replicated -= 1


# ---------------------------------------------------------------- process group

def setup() -> bool:
    """Initialise the default process group (backend gloo, ``env://``) when this process was
    started by a launcher, no group exists yet and sharding is not switched off.  Returns
    whether it initialised one (then :func:`teardown` destroys it)."""
    if _switched_off() or not launched():
        return False
    import torch.distributed as dist

    if not dist.is_available():  # pragma: no cover - a torch without distributed support
        import warnings

        warnings.warn("pytest-unlearn: this torch has no torch.distributed; every rank computes everything",
                      stacklevel=2)
        return False
    if dist.is_initialized():
        return False
    dist.init_process_group(backend="gloo", init_method="env://")
    _state["owned"] = True
    return True


def teardown() -> None:
    """Destroy the process group :func:`setup` created (a group the user created is left alone)."""
    group, _state["group"], _state["group_of"] = _state["group"], None, None
    if not _state["owned"]:
        return
    _state["owned"] = False
    dist = _initialised()
    if dist is not None:
        if group is not None:
            dist.destroy_process_group(group)
        dist.destroy_process_group()


def rank_device(device: str) -> str:
    """The device of this rank: under a launcher (or an initialised group of several processes),
    ``auto`` and ``cuda`` become ``cuda:(LOCAL_RANK mod number of GPUs)`` when CUDA is available;
    any other setting (``cpu``, ``cuda:N``, ``sharded``) is kept."""
    text = str(device or "auto").strip().lower()
    if text not in ("auto", "cuda") or not (launched() or active()):
        return device
    import torch

    if not torch.cuda.is_available() or torch.cuda.device_count() < 1:
        return device
    return f"cuda:{_env_int('LOCAL_RANK', rank()) % torch.cuda.device_count()}"


def session_settings(settings: "Settings") -> "Settings":
    """What the plugin does before building the session's suite: :func:`setup`, then this rank's
    device (:func:`rank_device`).  ``settings`` itself is left unchanged (the report shows it)."""
    setup()
    device = rank_device(settings.device)
    if device == settings.device:
        return settings
    return dataclasses.replace(settings, device=device)


def leave_report_files_to_rank0(config) -> None:
    """On ranks other than 0 under a launcher, switch off pytest's JUnit XML writer (every rank
    would write the same file at once).  The plugin's own report and summary check
    :func:`is_main_process` themselves."""
    if is_main_process():
        return
    try:
        from _pytest.junitxml import xml_key
    except ImportError:  # pragma: no cover - a pytest without it
        return
    xml = config.stash.get(xml_key, None)
    if xml is not None:
        del config.stash[xml_key]
        config.pluginmanager.unregister(xml)


# ---------------------------------------------------------------- collectives

def _group():
    """The group the collectives run over: the default one when it is gloo, else a gloo side
    group (created on first use, by every rank at the same point)."""
    dist = _initialised()
    default = dist.group.WORLD
    if str(dist.get_backend()) == "gloo":
        return None
    if _state["group"] is None or _state["group_of"] is not default:
        _state["group"] = dist.new_group(backend="gloo")
        _state["group_of"] = default
    return _state["group"]


def exchange(tag: str, obj: Any) -> list[Any]:
    """All-gather ``obj`` from every rank (a list by rank).  ``tag`` says what the collective is
    for; when the ranks' tags differ they are out of step and every rank raises
    :class:`DistributedError`."""
    dist = _initialised()
    if dist is None:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, (tag, obj), group=_group())
    tags = [t for t, _ in out]
    if any(t != tag for t in tags):
        raise DistributedError(
            "the ranks of a sharded evaluation are out of step: " + "; ".join(
                f"rank {r} at {t!r}" for r, t in enumerate(tags)) + ". Every rank must run the same tests "
            "in the same order on the same data (no random test order, no time budget that can end "
            "the search on one rank and not on another), and a failure on one rank alone (a model "
            "that does not load, ...) puts it out of step with the others")
    return [o for _, o in out]


def rank_batches(lengths: Sequence[int], batch_size: int, rank: int, world: int) -> list[list[int]]:
    """The length-sorted batches (as in a single-process run) that go to ``rank`` of ``world``:
    batch ``b`` to rank ``b % world``."""
    from .forward import length_sorted_batches

    return [b for k, b in enumerate(length_sorted_batches(lengths, batch_size)) if k % world == rank]


def _portable(exc: BaseException) -> BaseException | None:
    """``exc`` if it is one of ours and survives pickling (then other ranks raise the same type)."""
    if not isinstance(exc, UnlearnError):
        return None
    try:
        copy = pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001 - anything unpicklable is described in words instead
        return None
    return copy if type(copy) is type(exc) else None


def _described(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def _raise_failure(tag: str, gathered: list, failure: "Exception | None") -> None:
    """Raise on every rank when a gathered payload is an ``("error", text, portable)``: the rank
    that failed its own exception, the others the same error type when it is one of this
    library's, else a :class:`DistributedError` naming the failing rank."""
    failed = [(r, p) for r, p in enumerate(gathered) if p[0] == "error"]
    if not failed:
        return
    if failure is not None:
        raise failure
    r, (_, text, portable) = failed[0]
    if portable is not None:
        raise portable
    raise DistributedError(f"rank {r} of {len(gathered)} failed during {tag}: {text}")


def run_sharded(tag: str, lengths: Sequence[int], batch_size: int,
                compute: Callable[[list[int]], tuple[list, Any]]) -> tuple[list, list]:
    """Split work over the ranks by whole length-sorted batches and gather it.

    ``compute(rows)`` gets this rank's sample indices in sorted-batch order (run on them with
    ``batch_size``, the ordinary batching reproduces this rank's batches) and returns one item
    per row plus one ``extra`` object.  Returns ``(items in input order, extras by rank)``, the
    same on every rank.  When ``compute`` raises on any rank, every rank raises: the rank that
    failed its own exception, the others the same error type when it is one of this library's,
    else a :class:`DistributedError` naming the failing rank.
    """
    me, world = rank(), world_size()
    rows = [i for batch in rank_batches(lengths, batch_size, me, world) for i in batch]
    failure: Exception | None = None
    try:
        items, extra = compute(rows) if rows else ([], None)
        items = list(items)
        if len(items) != len(rows):
            raise DistributedError(f"{tag}: rank {me} computed {len(items)} results for {len(rows)} samples")
        payload: tuple = ("ok", rows, items, extra)
    except Exception as exc:  # noqa: BLE001 - gathered, then raised on every rank
        failure = exc
        payload = ("error", _described(exc), _portable(exc))
    gathered = exchange(tag, payload)
    _raise_failure(tag, gathered, failure)
    results: list[Any] = [None] * len(lengths)
    extras = []
    for _, idx, items, extra in gathered:
        for i, item in zip(idx, items):
            results[i] = item
        extras.append(extra)
    return results, extras


def from_rank0(tag: str, compute: Callable[[], Any], tensors: Sequence[tuple[str, "torch.Tensor"]]) -> Any:
    """Run ``compute()`` on rank 0 alone, then give every rank rank 0's ``tensors``.

    ``compute`` changes ``tensors`` in place (trains them, quantizes them, ...).  Under sharding
    (:func:`active`) rank 0 runs it while the other ranks wait; then each tensor is broadcast
    from rank 0, byte for byte, and copied into the other ranks' tensors of the same name (over
    gloo, through CPU memory one tensor at a time), so every rank ends up holding rank 0's
    weights.  Returns what ``compute`` returned on rank 0, on every rank (it must pickle).

    Before any tensor moves, one tagged collective carries rank 0's outcome and every rank's
    list of (name, shape, dtype): ranks out of step, or holding different tensors, raise
    :class:`DistributedError`; an exception in ``compute`` is raised on every rank as in
    :func:`run_sharded`, so no rank waits for weights that will not come.  Outside sharding
    this is just ``compute()``.
    """
    if not active():
        return compute()
    import torch

    me = rank()
    tensors = list(tensors)
    layout = [(str(n), tuple(t.shape), str(t.dtype)) for n, t in tensors]
    failure: Exception | None = None
    payload: tuple = ("ok", layout, None)
    if me == 0:
        try:
            payload = ("ok", layout, compute())
        except Exception as exc:  # noqa: BLE001 - gathered, then raised on every rank
            failure = exc
            payload = ("error", _described(exc), _portable(exc))
    gathered = exchange(tag, payload)
    _raise_failure(tag, gathered, failure)
    differ = [r for r, p in enumerate(gathered) if p[1] != layout]
    if differ:
        raise DistributedError(f"{tag}: rank {differ[0]} holds other tensors than this rank ({me}); every rank "
                               "must attack the same model in the same way")
    dist, group = _initialised(), _group()
    with torch.no_grad():
        for _, t in tensors:
            if t.numel() == 0:
                continue
            direct = t.device.type == "cpu" and t.is_contiguous()
            if direct:
                buf = t.detach()
            elif me == 0:
                buf = t.detach().to("cpu").contiguous()
            else:
                buf = torch.empty(t.shape, dtype=t.dtype)
            dist.broadcast(buf.reshape(-1).view(torch.uint8), src=0, group=group)
            if me != 0 and not direct:
                t.copy_(buf)
    return gathered[0][2]


from .rank0_cache import SharedCache, shared_cache  # noqa: E402,F401  the cache rank 0 alone reads and writes
