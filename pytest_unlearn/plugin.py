"""pytest plugin wiring for pytest-unlearn (registered as ``unlearn``; ``-p no:unlearn`` disables it).

Wiring only: options (:mod:`.config`), session fixtures (a :class:`~pytest_unlearn.suite.Suite`),
hooks that move each assertion's record onto the test's ``user_properties``, merge the
records of pytest-xdist workers on the controller, print the summary and write the JSON
report (:mod:`.reporting`).  Under ``torchrun`` every rank runs the session, the scoring is
sharded (:mod:`.distributed`), and rank 0 alone prints the summary and writes the reports.
Importing this module imports neither torch, transformers, numpy nor pandas, and a run that
uses none of its fixtures or assertions prints nothing.
"""

from __future__ import annotations

import warnings

import pytest

# before anything imports it; its frames are hidden from tracebacks as well
pytest.register_assert_rewrite("pytest_unlearn.assertions")

from . import __version__, distributed, reporting, session  # noqa: E402
from .config import add_options, missing, settings_from_config  # noqa: E402
from .errors import CacheWarning, UnlearnError, write_failure  # noqa: E402


class UnlearnState:
    """Per-session state, kept in ``config.stash[STATE_KEY]``."""

    def __init__(self, config: pytest.Config):
        self.config = config
        self.recorder = reporting.Recorder()
        self.workers: list[str] = []
        self.report_path: str | None = None
        self.report_error: str | None = None
        self._suite = None
        self.provider = self.suite  # one bound method, so it can be pushed and popped
        try:
            self._settings, self._settings_error = settings_from_config(config), None
        except UnlearnError as exc:  # raised when something needs the settings, not in every run
            self._settings, self._settings_error = None, exc

    @property
    def settings(self):
        if self._settings_error is not None:
            raise self._settings_error
        return self._settings

    def suite(self):
        """The session's Suite, created on first use (cheap: it loads lazily)."""
        if self._suite is None:
            from .suite import Suite

            settings = self.settings
            # under torchrun: the process group, and this rank's device
            self._suite = Suite(distributed.session_settings(settings), cache_dir=self._cache_dir(settings),
                                root=str(self.config.rootpath))
            self._suite.calibration_listeners.append(
                lambda result, handle: self.recorder.add_calibration(reporting.calibration_record(result, handle)))
        return self._suite

    def _cache_dir(self, settings):
        """``.pytest_cache/d/unlearn``, or None (uncached, with one warning) when it cannot be made."""
        cache = getattr(self.config, "cache", None)
        if settings.no_cache or cache is None:
            return None
        try:
            return cache.mkdir("unlearn")
        except OSError as exc:
            folder = exc.filename or getattr(cache, "_cachedir", ".")
            warnings.warn(CacheWarning(f"cannot create the result cache folder: {write_failure(exc, folder)}; "
                                       "running without the cache (make it writable, set cache_dir, or pass "
                                       "--unlearn-no-cache)"))
            return None

    def finish(self) -> None:
        """Note the models and costs of this session, then release the models."""
        if self._suite is None:
            return
        self.recorder.add_models({role: {"source": h.source, "fingerprint": h.fingerprint,
                                         "opt_ins": list(h.opt_ins)}
                                  for role, h in self._suite.loaded_models().items()})
        self.recorder.add_cost(self._suite.cost() or {})
        self._suite.close()


STATE_KEY = pytest.StashKey[UnlearnState]()


def _state(config: pytest.Config) -> UnlearnState | None:
    return config.stash.get(STATE_KEY, None)


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


# ---------------------------------------------------------------- options and session

def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    from .baseline_hooks import BaselineHooks

    if config.getoption("cacheclear", False) and not _is_worker(config):
        from .models import clear_digest_memo

        clear_digest_memo()  # the file digests that model fingerprints reuse (docs/configuration.md)
    state = UnlearnState(config)
    config.stash[STATE_KEY] = state
    hooks = BaselineHooks(config, state)
    # the assertions use the session's suite, recorder and baseline store (pytest_unlearn.session)
    state.frame = session.enter(suite=state.provider, recorder=state.recorder, store=hooks.store)
    config.pluginmanager.register(hooks, "unlearn-baselines")


def pytest_unconfigure(config: pytest.Config) -> None:
    state = _state(config)
    if state is None:
        return
    session.leave(state.frame)
    if state._suite is not None:
        state._suite.close()
    distributed.teardown()


# ---------------------------------------------------------------- fixtures

def _checked(get):
    """Run ``get()``; an UnlearnError becomes a clean test error without a traceback."""
    try:
        return get()
    except UnlearnError as exc:
        error = exc
    pytest.fail(f"{type(error).__name__}: {error}", pytrace=False)  # outside `except`: no chained traceback


@pytest.fixture(scope="session")
def unlearn(request: pytest.FixtureRequest):
    """The session's Suite: ``.original``, ``.unlearned``, ``.reference``, ``.forget``,
    ``.retain``, ``.holdout``, ``.score(...)``, ``.calibrate(...)``."""
    return _checked(_state(request.config).suite)


@pytest.fixture(scope="session")
def original_model(unlearn):
    """The original model (before unlearning), a ModelHandle."""
    return _checked(lambda: unlearn.original)


@pytest.fixture(scope="session")
def unlearned_model(unlearn):
    """The unlearned model under test, a ModelHandle."""
    return _checked(lambda: unlearn.unlearned)


def _required(role: str, value):
    if value is None:
        raise missing(role)
    return value


@pytest.fixture(scope="session")
def reference_model(unlearn):
    """The reference model that never saw the forget set (an error if not configured)."""
    return _checked(lambda: _required("reference", unlearn.reference))


@pytest.fixture(scope="session")
def forget_set(unlearn):
    """The forget set, a Dataset."""
    return _checked(lambda: unlearn.forget)


@pytest.fixture(scope="session")
def retain_set(unlearn):
    """The retain set, a Dataset."""
    return _checked(lambda: unlearn.retain)


@pytest.fixture(scope="session")
def holdout_set(unlearn):
    """The holdout (non-member) set, a Dataset (an error if not configured)."""
    return _checked(lambda: _required("holdout", unlearn.holdout))


@pytest.fixture(scope="session")
def calibrated_model(unlearn):
    """The UWC-calibrated model at the default tau (0.9), a ModelHandle."""
    return _checked(lambda: unlearn.calibrate().model)


def pytest_sessionstart(session: pytest.Session) -> None:
    distributed.leave_report_files_to_rank0(session.config)


# ---------------------------------------------------------------- per test

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem):
    state = _state(item.config)
    if state is not None:
        state.recorder.current_test = item.nodeid
    yield
    if state is not None:
        state.recorder.current_test = None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    state = _state(item.config)
    if state is not None:  # records made in this phase go onto the report (and JUnit XML)
        for record in state.recorder.take_pending():
            taken = [name for name, _ in item.user_properties]
            item.user_properties.extend(reporting.user_properties(record, taken))
    outcome = yield
    excinfo = call.excinfo
    if excinfo is not None and isinstance(excinfo.value, UnlearnError):
        report = outcome.get_result()
        if report.failed:  # the message says it all; no traceback from deep inside torch
            report.longrepr = f"{type(excinfo.value).__name__}: {excinfo.value}"


# ---------------------------------------------------------------- end of session, xdist

def pytest_sessionfinish(session: pytest.Session, exitstatus) -> None:
    config = session.config
    state = _state(config)
    if state is None:
        return
    state.finish()
    if _is_worker(config):  # send plain data to the controller, which reports
        config.workeroutput["unlearn"] = state.recorder.to_workeroutput()
        return
    if not distributed.is_main_process():  # torchrun: rank 0 reports
        return
    if state._settings is None or not state._settings.report:
        return
    report = reporting.build_report(state.recorder, state._settings.to_dict(), version=__version__,
                                    workers=sorted(state.workers) or None)
    try:
        state.report_path = reporting.write_report(state._settings.report, report)
    except UnlearnError as exc:  # the summary and the outcome line are still printed
        state.report_error = str(exc)
        if session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.USAGE_ERROR


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    state = _state(node.config)
    if state is None:
        return
    output = getattr(node, "workeroutput", None) or {}
    state.recorder.merge(output.get("unlearn"))
    worker = output.get("workerid") or getattr(getattr(node, "gateway", None), "id", None)
    if worker:
        state.workers.append(str(worker))


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    state = _state(config)
    if state is None or _is_worker(config) or not distributed.is_main_process():
        return
    if not state.recorder.empty:
        terminalreporter.write_sep("=", "unlearning summary")
        for line in reporting.summary_lines(state.recorder.assertions, state.recorder.calibrations):
            terminalreporter.write_line(line)
    if state.report_path:
        terminalreporter.write_line(f"unlearning report: {state.report_path}")
    if state.report_error:
        terminalreporter.write_line(f"ERROR: {state.report_error}", red=True, bold=True)


# ---------------------------------------------------------------- regression baselines (docs/baselines.md)

@pytest.fixture
def unlearn_baseline(request: pytest.FixtureRequest):
    """``assert_no_regression`` bound to this test: ``unlearn_baseline("es", under_attack=[...])``
    compares with ``unlearn-baselines/<test name>.json`` under the rootdir."""
    from .baselines import BaselineCheck

    return BaselineCheck(request.node.nodeid)
