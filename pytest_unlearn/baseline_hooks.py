"""The baselines' pytest hooks, beside the baseline store (:mod:`pytest_unlearn.baselines`),
as pytest's cacheprovider keeps its hooks beside its cache.  ``plugin.py`` registers
:class:`BaselineHooks` once per session; this module is wiring and may import pytest."""

from __future__ import annotations

import pytest

from . import distributed
from .plugin import UnlearnState, _is_worker

__all__ = ["BaselineHooks"]


class BaselineHooks:
    """The baselines' share of the session: the active BaselineStore, which baselines the tests
    used (xdist workers send theirs), and, from the controller alone, what was written and
    which baselines went stale in a run that covered the whole suite."""

    def __init__(self, config: pytest.Config, state: UnlearnState):
        from .baselines import BaselineStore

        self.config = config
        self.store = BaselineStore(config.rootpath, update=bool(getattr(state._settings, "update_baselines", False)))
        self.complete = False

    def pytest_deselected(self, items) -> None:
        if items:
            self.store.narrowed = True

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo):
        outcome = yield
        report = outcome.get_result()
        not_run = report.skipped or (call.when == "setup" and report.failed)
        if not_run and "unlearn_baseline" in getattr(item, "fixturenames", ()):  # it still owns its baseline
            from .baselines import default_name

            self.store.mark_used(self.store.path_for(default_name(item.nodeid)), item.nodeid)
        if call.when == "teardown":
            self.store.end_test()

    def _narrowed_by_args(self) -> bool:
        config = self.config
        if config.args_source != pytest.Config.ArgsSource.ARGS:
            return False
        roots = {config.rootpath.resolve()}
        roots |= {(config.rootpath / p).resolve() for p in config.getini("testpaths") or []}
        for arg in config.args:
            path = arg.split("::")[0]
            if "::" in arg or (config.invocation_params.dir / path).resolve() not in roots:
                return True
        return False

    @pytest.hookimpl(tryfirst=True)  # before xdist's worker sends its output
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus) -> None:
        if _is_worker(self.config):
            self.config.workeroutput["unlearn_baselines"] = self.store.to_workeroutput()
            return
        ran = not any(getattr(self.config.option, o, False) for o in ("collectonly", "setuponly", "setupplan"))
        self.complete = (ran and not self.store.narrowed and not session.shouldfail and not session.shouldstop
                         and int(exitstatus) in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED)
                         and not self._narrowed_by_args())

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node, error) -> None:
        output = getattr(node, "workeroutput", None) or {}
        self.store.merge(output.get("unlearn_baselines"))
        if error or output.get("shouldfail") or output.get("shouldstop"):
            self.store.narrowed = True  # a worker crashed or stopped early: not every test ran

    def pytest_terminal_summary(self, terminalreporter, exitstatus, config: pytest.Config) -> None:
        if _is_worker(config) or not distributed.is_main_process():
            return
        lines = self.store.summary_lines(complete=self.complete)
        if lines:
            terminalreporter.write_sep("=", "unlearning baselines")
            for line in lines:
                terminalreporter.write_line(line)
