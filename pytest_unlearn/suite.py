"""The :class:`Suite`: models, data and scoring of one unlearning test session.

The ``unlearn`` fixture is a ``Suite`` built from the pytest settings; a notebook builds
one with :meth:`Suite.from_paths`.  Everything is loaded lazily and memoised: a test
that only reads the forget set never loads a model.  One :class:`~pytest_unlearn.scoring.Scorer`
(prompt format, batch size, result cache) serves every score, attack and calibration,
and weight attacks keep their outcomes (and relearning its trained folds) in memory for the
session, so a score, an attack outcome or a calibration is computed once per session; with
the cache, scores and outcomes are reused across sessions.

``assert_forgotten`` and ``assert_retained`` find the *active* suite: the plugin makes
the session's suite active; a notebook calls :meth:`Suite.activate` or passes
``suite=``.  Importing this module is cheap (no torch, numpy or pandas).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .config import Settings, worker_device
from .errors import AttackError, ConfigError, UnlearnError

if TYPE_CHECKING:
    from .attacks import AttackOutcome
    from .calibration import CalibrationResult
    from .data import Dataset
    from .metrics import Metric
    from .models import ModelHandle
    from .scoring import Scorer, ScoreResult

__all__ = ["Suite", "current_suite"]

_USE_ENV = object()
_ROLE_NAMES = {"original": "original", "model": "unlearned", "reference": "reference"}

# the active suite (or a lazy provider of one) is held by pytest_unlearn.session; the newest wins
def push_active(suite_or_provider) -> None:
    from . import session

    session.enter(suite=suite_or_provider)


def pop_active(suite_or_provider) -> None:
    from . import session

    session.leave_part("suite", suite_or_provider)


def current_suite(suite: "Suite | None" = None) -> "Suite":
    """``suite`` if given, else the active one (:mod:`pytest_unlearn.session`), else a ConfigError
    saying how to get one."""
    from . import session

    if suite is not None:
        return suite
    top = session.current("suite")
    if top is not None:
        return top if isinstance(top, Suite) else top()
    raise ConfigError(
        "no active pytest-unlearn suite: run the assertion under pytest with the plugin enabled "
        "(not -p no:unlearn), or pass suite=Suite.from_paths(...), or call Suite.from_paths(...).activate()"
    )


class Suite:
    """Lazily loaded models and data plus one Scorer; see the module docstring."""

    def __init__(self, settings: Settings | None = None, *, cache_dir: Any = _USE_ENV, root: Any = None):
        self.settings = settings or Settings()
        # relative model= / data= paths start here (the plugin passes pytest's rootdir); None: the cwd
        self.root = None if root is None else os.path.abspath(os.fspath(root))
        if cache_dir is _USE_ENV:
            env = os.environ.get("PYTEST_UNLEARN_CACHE_DIR")
            cache_dir = Path(env) / "results" if env else None
        self.cache_dir = None if self.settings.no_cache or cache_dir is None else Path(cache_dir)
        self._roles: dict[str, "ModelHandle"] = {}
        self._by_path: dict[str, "ModelHandle"] = {}
        self._data: dict[str, "Dataset"] = {}
        self._scorer: "Scorer | None" = None
        self._calibrations: dict[tuple, "CalibrationResult"] = {}
        self._workspaces: dict[str, Any] = {}  # unlearned fingerprint -> its one calibration working copy
        self._placement: dict[str, str] | None = None  # role -> device, planned before the first load
        self.calibration_listeners: list[Callable[["CalibrationResult", "ModelHandle"], None]] = []

    @classmethod
    def from_paths(cls, original=None, model=None, forget=None, retain=None, holdout=None,
                   reference=None, *, cache_dir: Any = _USE_ENV, root: Any = None, **settings) -> "Suite":
        """A suite for a notebook or script; ``settings`` are further :class:`Settings` fields.
        Results are cached under ``$PYTEST_UNLEARN_CACHE_DIR/results`` when that is set;
        relative ``model=`` / ``data=`` paths start from ``root`` (default: the working directory)."""
        return cls(Settings(original=original, model=model, forget=forget, retain=retain,
                            holdout=holdout, reference=reference, **settings), cache_dir=cache_dir, root=root)

    # ------------------------------------------------------------ activation
    def activate(self) -> "Suite":
        """Make this the suite that ``assert_forgotten`` / ``assert_retained`` use."""
        push_active(self)
        return self

    def deactivate(self) -> None:
        pop_active(self)

    def __enter__(self) -> "Suite":
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()
        self.close()

    # ------------------------------------------------------------ models
    @property
    def device(self) -> str:
        """The configured device; ``auto`` under pytest-xdist pins worker gwK to cuda:(K mod n)."""
        return worker_device(self.settings.device)

    @property
    def original(self) -> "ModelHandle":
        return self._role("original")

    @property
    def unlearned(self) -> "ModelHandle":
        return self._role("model")

    @property
    def reference(self) -> "ModelHandle | None":
        return self._role("reference") if self.settings.reference else None

    def has(self, role: str) -> bool:
        """Whether ``original``, ``model``, ``reference``, ``forget``, ... is configured."""
        return bool(getattr(self.settings, role, None))

    def loaded_models(self) -> dict[str, "ModelHandle"]:
        """The models loaded so far, by role (``original``, ``unlearned``, ``reference``)."""
        return {_ROLE_NAMES[r]: h for r, h in self._roles.items()}

    def placement(self) -> dict[str, str]:
        """The device of every role (``original``, ``model``, ``reference``, ``working copy``),
        planned once, before the first model is loaded, from the configured checkpoints' sizes
        and the GPUs' free memory (:func:`~pytest_unlearn.models.plan_placement`).  Only for
        ``unlearn_device = auto`` on CUDA; ``{}`` otherwise (every role on the configured device)."""
        if self._placement is None:
            self._placement = self._plan_placement()
        return self._placement

    def _plan_placement(self) -> dict[str, str]:
        if str(self.device or "auto").strip().lower() != "auto":
            return {}
        from .models import checkpoint_bytes, gpu_free_bytes, plan_placement, resolve_dtype

        free = gpu_free_bytes()
        if not free:
            return {}
        dtype = resolve_dtype(self.settings.dtype, "cuda")
        paths = {role: os.path.abspath(os.path.expanduser(os.fspath(getattr(self.settings, role))))
                 for role in ("model", "original", "reference") if getattr(self.settings, role, None)}
        original = paths.get("original")
        base = checkpoint_bytes(original, dtype) if original else None
        weights, first_role = {}, {}
        for role, path in paths.items():
            if path in first_role:  # one checkpoint in two roles is loaded once
                continue
            size = checkpoint_bytes(path, dtype, base)
            if size is not None:
                weights[role] = size
                first_role[path] = role
        if "model" in weights and "original" in paths:  # calibration's working copy of the unlearned model
            weights["working copy"] = weights["model"]
        plan = plan_placement(weights, free)
        for role, path in paths.items():
            if role not in plan and path in first_role:
                plan[role] = plan[first_role[path]]
        return plan

    def _role(self, role: str) -> "ModelHandle":
        handle = self._roles.get(role)
        if handle is None:
            handle = self._load(self.settings.require(role), _ROLE_NAMES[role], role)
            self._roles[role] = handle
        return handle

    def _load(self, path: str, name: str, role: str | None = None) -> "ModelHandle":
        path = os.path.abspath(os.path.expanduser(os.fspath(path)))
        known = self._by_path.get(path)
        if known is not None:  # the same checkpoint in two roles is loaded once
            return known if known.name == name else known.derive(fingerprint=known.fingerprint, name=name)
        from .models import load_model

        base = None
        if role != "original" and self.settings.original and (Path(path) / "adapter_config.json").is_file():
            base = self.original  # a PEFT adapter applies on the configured original
        s = self.settings
        device = self.placement().get(role, self.device) if role else self.device
        handle = load_model(path, base=base, device=device, dtype=s.dtype, allow_pickle=s.allow_pickle,
                            trust_remote_code=s.trust_remote_code, name=name)
        self._by_path[path] = handle
        return handle

    def model(self, spec=None) -> "ModelHandle":
        """A handle from ``None`` (the unlearned model), a path or a ModelHandle."""
        if spec is None:
            return self.unlearned
        if isinstance(spec, (str, os.PathLike)):
            return self._load(self._resolve(spec), Path(os.fspath(spec)).name or "model")
        if hasattr(spec, "model") and hasattr(spec, "tokenizer") and hasattr(spec, "fingerprint"):
            return spec
        raise ConfigError(f"model= must be a path or a ModelHandle (see pytest_unlearn.load_model), "
                          f"got {type(spec).__name__}")

    def _resolve(self, spec) -> str:
        """A ``model=`` / ``data=`` path: a relative one starts from :attr:`root` (the rootdir
        under pytest), not from wherever pytest was started.  It stays relative when it can
        (to the working directory), so messages show it as the user wrote it."""
        text = os.path.expanduser(os.fspath(spec))
        if self.root is None or os.path.isabs(text):
            return text
        path = os.path.normpath(os.path.join(self.root, text))
        try:
            shown = os.path.relpath(path)
        except ValueError:  # another drive
            return path
        return text if os.path.normpath(text) == shown else shown

    # ------------------------------------------------------------ data
    @property
    def forget(self) -> "Dataset":
        return self._dataset("forget")

    @property
    def retain(self) -> "Dataset":
        return self._dataset("retain")

    @property
    def holdout(self) -> "Dataset | None":
        return self._dataset("holdout") if self.settings.holdout else None

    def _dataset(self, role: str) -> "Dataset":
        if role not in self._data:
            from .data import load_dataset

            self._data[role] = load_dataset(self.settings.require(role), name=role,
                                            columns=self.settings.columns, benchmark=self.settings.benchmark)
        return self._data[role]

    def data(self, spec=None, *, default: str = "forget") -> "Dataset":
        """A Dataset from ``None`` (the ``default`` role), a path, a Dataset or records."""
        if spec is None:
            return self._dataset(default)
        from .data import Dataset, dataset_from_records, load_dataset

        if isinstance(spec, Dataset):
            return spec
        if isinstance(spec, (str, os.PathLike)):
            path = self._resolve(spec)
            key = "path:" + os.path.abspath(path)
            if key not in self._data:
                self._data[key] = load_dataset(path, name=Path(os.fspath(spec)).stem,
                                               columns=self.settings.columns, benchmark=self.settings.benchmark)
            return self._data[key]
        if type(spec).__module__.split(".")[0] == "datasets":  # a datasets.Dataset
            return load_dataset(spec, name="data", columns=self.settings.columns)
        if isinstance(spec, list) or type(spec).__name__ == "DataFrame":
            return dataset_from_records(spec, name="data", source="<records>")
        raise ConfigError(f"data= must be a path, a Dataset or a list of records, got {type(spec).__name__}")

    # ------------------------------------------------------------ scoring
    @property
    def scorer(self) -> "Scorer":
        if self._scorer is None:
            from .cache import ResultCache
            from .scoring import Scorer

            self._scorer = Scorer.from_settings(self.settings, cache=ResultCache(self.cache_dir))
        return self._scorer

    def attack_context(self):
        from .attacks import AttackContext

        return AttackContext(
            self.scorer,
            original=self.original if self.has("original") else None,
            forget=self.forget if self.has("forget") else None,
            retain=self.retain if self.has("retain") else None,
            seed=self.settings.seed, progress=self.settings.progress, cache=self.scorer.cache)

    def run_attack(self, attack, metric: "Metric", handle: "ModelHandle", dataset: "Dataset") -> "AttackOutcome":
        """Run one attack; any failure, or a sample it left unscored, is an AttackError."""
        import numpy as np

        try:
            outcome = attack.run(metric, handle, dataset, self.attack_context())
        except UnlearnError:
            raise
        except Exception as exc:  # an attack that cannot run must never let a gate pass
            raise AttackError(f"attack {attack.spec!r} failed on the {handle.name} model: "
                              f"{type(exc).__name__}: {exc}") from exc
        values = np.asarray(outcome.values, dtype=np.float64)
        if values.shape != (len(dataset),):
            raise AttackError(f"attack {attack.spec!r} returned {values.size} scores for the "
                              f"{len(dataset)} samples of {dataset.source}")
        bad = np.flatnonzero(np.isnan(values))
        if len(bad):
            where = getattr(dataset, "locations", None)
            first = f"sample {dataset.ids[bad[0]]}" + (f", {where[bad[0]]}" if where else "")
            raise AttackError(f"attack {attack.spec!r} left {len(bad)} of {len(values)} samples of "
                              f"{dataset.source} unscored (NaN; first: {first}) on the "
                              f"{handle.name} model, so no verdict can be given")
        outcome.values = values
        return outcome

    def score(self, metric, model=None, data=None, attack=None, reduce: str = "mean") -> "ScoreResult":
        """Per-sample scores (a pandas Series by sample id) plus the reduced value; ``attack``
        (a spec such as ``"quantize:4"`` or an attack object) scores under that attack."""
        from .metrics import get_metric

        m = get_metric(metric)
        handle, dataset = self.model(model), self.data(data)
        if attack is None:
            return self.scorer.score(m, handle, dataset, reduce=reduce)
        import pandas as pd

        from .attacks import parse_attack
        from .metrics import reduce_scores
        from .scoring import ScoreResult

        a = parse_attack(attack)
        outcome = self.run_attack(a, m, handle, dataset)
        series = pd.Series(outcome.values, index=pd.Index(dataset.ids, name="sample"), name=m.name)
        return ScoreResult(m, series, reduce_scores(outcome.values, reduce, m), reduce, handle.name,
                           dataset.name, a.spec, dict(outcome.cost or {}))

    # ------------------------------------------------------------ calibration
    def calibration_device(self) -> "str | None":
        """Where calibration's working copy goes: the configured device when it names one
        (``cpu``, ``cuda``, ``cuda:N``); for ``auto`` on CUDA the device :meth:`placement`
        planned for it; else ``None`` (the unlearned model's device)."""
        planned = self.placement().get("working copy")
        if planned is not None and planned != "sharded":
            return planned
        device = str(self.device or "auto").strip().lower()
        return None if device in ("auto", "sharded") else device

    def calibrate(self, tau: float = 0.9, metric: str = "es", *, model=None) -> "CalibrationResult":
        """The UWC-calibrated model at ``tau`` (memoised per tau, metric and model).  Every
        tau and metric of one unlearned model shares one working copy of the weights."""
        handle = self.model(model)
        key = (float(tau), str(metric), handle.fingerprint)
        if key not in self._calibrations:
            from .calibration import _Workspace, calibrate

            device = self.calibration_device()
            workspace = self._workspaces.get(handle.fingerprint)
            if workspace is None:
                workspace = self._workspaces[handle.fingerprint] = _Workspace(device)
            result = calibrate(self.original, handle, self.retain, tau=float(tau), metric=metric,
                               forget=self.forget if self.has("forget") else None, scorer=self.scorer,
                               cache=self.scorer.cache, progress=self.settings.progress, device=device,
                               _workspace=workspace)
            self._calibrations[key] = result
            for listener in self.calibration_listeners:
                listener(result, handle)
        return self._calibrations[key]

    def cost(self) -> dict | None:
        """The Scorer's running cost (forward batches, generations, cache hits), if it ran."""
        return self._scorer.cost.as_dict() if self._scorer is not None else None

    def calibrations(self) -> list["CalibrationResult"]:
        return list(self._calibrations.values())

    # ------------------------------------------------------------ the end
    def close(self) -> None:
        """Release every model this suite loaded (and calibrated)."""
        if self._scorer is not None:  # the weights relearning kept for the session
            from .attacks.session_memo import release_memo

            release_memo(self._scorer)
        for calibration in self._calibrations.values():
            calibration.model.model = None  # a calibrated handle holds no weights of its own
        for workspace in self._workspaces.values():
            workspace.release()
        handles = list(self._roles.values()) + list(self._by_path.values())
        self._roles.clear()
        self._by_path.clear()
        self._calibrations.clear()
        self._workspaces.clear()
        alive = list({id(h): h for h in handles if h is not None and getattr(h, "model", None) is not None}.values())
        for h in alive[:-1]:  # drop every reference, then let the last release() collect once
            h.model = None
        if alive:
            alive[-1].release()

    def __repr__(self) -> str:
        s = self.settings
        return f"Suite(original={s.original!r}, model={s.model!r}, forget={s.forget!r}, retain={s.retain!r})"
