"""Settings: every ``unlearn_*`` ini key and ``--unlearn-*`` flag, in one dataclass.

Each setting exists as an ini key (``pytest.ini``, ``[tool.pytest.ini_options]`` in
``pyproject.toml``, ...) and as a command-line flag; the flag wins.  Paths given in an
ini file resolve relative to that ini file's folder, paths given as flags relative to
the folder pytest was started in.  Nothing here imports torch, numpy or pandas: the
plugin reads the settings in every pytest run, used or not.

A notebook builds :class:`Settings` directly (or uses ``Suite.from_paths``).
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["Settings", "OPTIONS", "add_options", "settings_from_config", "ini_key", "flag",
           "missing", "worker_device"]


@dataclass(frozen=True)
class Option:
    name: str  # Settings field
    kind: str  # "path" | "str" | "int" | "bool"
    help: str
    metavar: str = ""
    ini: bool = True  # False: a flag only (the contract has no ini key for it)


OPTIONS: tuple[Option, ...] = (
    Option("original", "path", "the model before unlearning: a Hugging Face model folder "
           "(safetensors) or a .gguf file", "PATH"),
    Option("model", "path", "the unlearned model: a model folder, a PEFT adapter folder "
           "(applied on the original) or a .gguf file", "PATH"),
    Option("forget", "path", "forget data file (.jsonl, .json, .csv, .parquet)", "PATH"),
    Option("retain", "path", "retain data file", "PATH"),
    Option("holdout", "path", "optional non-member data, for membership-inference AUCs", "PATH"),
    Option("reference", "path", "optional model that never saw the forget set (a control for attacks)",
           "PATH"),
    Option("prompt", "str", "prompt format: chat (the tokenizer's chat template; default when it has "
           "one), plain, or a format string such as 'Question: {question}\\nAnswer:'", "FORMAT"),
    Option("system_prompt", "str", "a system prompt for every scored prompt (a system turn in chat "
           "format, a first paragraph otherwise); kept exactly as written", "TEXT"),
    Option("chat_template_args", "str", "extra arguments for the chat template, as a JSON object "
           "(e.g. '{\"enable_thinking\": false}' or '{\"date_string\": \"26 Jul 2024\"}'); a template that "
           "reads the date gets 26 Jul 2024 unless date_string is given", "JSON"),
    Option("device", "str", "auto (default), cpu, cuda, cuda:N, or sharded (device_map=auto over all GPUs)", "DEVICE"),
    Option("dtype", "str", "auto (default), float32, bfloat16 or float16", "DTYPE"),
    Option("batch_size", "int", "batch size of forward passes (default chosen by the library)", "N"),
    Option("seed", "int", "seed of every stochastic step (attacks, bootstrap); default 0", "N"),
    Option("report", "path", "write a JSON report of every assertion, attack and sample to PATH", "PATH"),
    Option("no_cache", "bool", "ignore and do not write cached results", ini=False),
    Option("allow_pickle", "bool", "allow loading pickle-based weights (.bin, .pt): they can run code"),
    Option("trust_remote_code", "bool", "allow running model code shipped with a checkpoint"),
    Option("progress", "bool", "show progress bars for forward passes, attacks and calibration"),
    Option("update_baselines", "bool", "write or refresh the regression baselines (unlearn-baselines/*.json) "
           "instead of comparing with them"),
    Option("columns", "str", "map data columns to the fields read, e.g. 'question=query, completion=gt' "
           "(applies to the forget, retain and holdout files)", "MAP"),
    Option("strict_vacuous", "bool", "fail an assert_forgotten that passes only because the original model "
           "already scores within the threshold (it never knew the data): for release pipelines"),
    Option("benchmark", "str", "a benchmark preset, tofu or muse: the prompt format, system prompt and "
           "generation lengths that benchmark's own evaluation uses (each overridden by its explicit "
           "setting); see docs/benchmarks.md", "NAME"),
    Option("max_new_tokens", "int", "new tokens of every greedy answer (ROUGE, shown answers) instead of the "
           "budget per sample from the answer's length (or the benchmark preset's)", "N"),
)
_BY_NAME = {o.name: o for o in OPTIONS}
_VERBATIM = {"prompt", "system_prompt"}  # a format string's trailing newline is part of the prompt

# what each setting is, for "no ... configured" messages
_WHAT = {
    "original": "original model (the model before unlearning)",
    "model": "unlearned model",
    "forget": "forget set",
    "retain": "retain set",
    "holdout": "holdout set (non-member data)",
    "reference": "reference model (a model that never saw the forget set)",
}


def ini_key(name: str) -> str:
    return f"unlearn_{name}"


def flag(name: str) -> str:
    return "--unlearn-" + name.replace("_", "-")


def missing(name: str) -> ConfigError:
    """The error for a setting a fixture or assertion needs but nobody set."""
    what = _WHAT.get(name, name.replace("_", " "))
    opt = _BY_NAME[name]
    metavar = f" {opt.metavar}" if opt.metavar else ""
    where = f"set `{ini_key(name)}` in pytest.ini / pyproject.toml or pass {flag(name)}{metavar}"
    if not opt.ini:
        where = f"pass {flag(name)}{metavar}"
    return ConfigError(f"no {what} configured: {where}")


@dataclass
class Settings:
    """Every setting of a pytest-unlearn run.  Paths are absolute (or None)."""

    original: str | None = None
    model: str | None = None
    forget: str | None = None
    retain: str | None = None
    holdout: str | None = None
    reference: str | None = None
    prompt: str | None = None  # None: chat when the tokenizer has a template, else plain
    system_prompt: str | None = None
    chat_template_args: str | None = None  # a JSON object
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int | None = None
    seed: int = 0
    report: str | None = None
    no_cache: bool = False
    allow_pickle: bool = False
    trust_remote_code: bool = False
    progress: bool = False
    update_baselines: bool = False
    strict_vacuous: bool = False
    columns: str | None = None  # "question=query, completion=gt"
    benchmark: str | None = None  # "tofu" | "muse": a preset (pytest_unlearn.presets)
    max_new_tokens: int | None = None  # a fixed new-token budget for greedy answers

    def __post_init__(self) -> None:
        for opt in OPTIONS:
            value = getattr(self, opt.name)
            if opt.kind == "path" and value is not None:
                text = os.path.expanduser(os.fspath(value))
                folder = opt.name == "report" and text.endswith(("/", os.sep))  # write into this folder
                setattr(self, opt.name, os.path.abspath(text) + (os.sep if folder else ""))
        if self.batch_size is not None:
            self.batch_size = _to_int("batch_size", self.batch_size, minimum=1)
        self.seed = _to_int("seed", self.seed, minimum=0, maximum=MAX_SEED)
        if self.max_new_tokens is not None:
            self.max_new_tokens = _to_int("max_new_tokens", self.max_new_tokens, minimum=1)
        if self.benchmark is not None:
            from .presets import normalise  # light: no torch

            self.benchmark = normalise(self.benchmark)
        if self.chat_template_args is not None:
            from .prompts import parse_template_args  # light: no torch

            parse_template_args(self.chat_template_args,
                                f"{ini_key('chat_template_args')} / {flag('chat_template_args')}")

    def require(self, name: str) -> str:
        """The value of a path setting, or the ConfigError that names its key and flag."""
        value = getattr(self, name)
        if value in (None, ""):
            raise missing(name)
        return value

    def opt_ins(self) -> list[str]:
        return [n for n in ("allow_pickle", "trust_remote_code") if getattr(self, n)]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


MAX_SEED = 2**32 - 1  # numpy's and torch's seeds are unsigned 32/64-bit integers


def _to_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(value, bool):  # a TOML `true` is not a number
        value = str(value).lower()
    try:
        number = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise ConfigError(f"{ini_key(name)} / {flag(name)} must be an integer, got {value!r}") from None
    if minimum is not None and number < minimum or maximum is not None and number > maximum:
        span = f"at least {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise ConfigError(f"{ini_key(name)} / {flag(name)} must be {span}, got {number}")
    return number


def _to_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{ini_key(name)} must be true or false, got {value!r}")


def _ini_type(kind: str):
    """pytest >= 9.2 takes a union of types: a TOML table (``[tool.pytest]``) may then give
    ``4`` or ``true`` natively, and an ini file's ``maybe`` reaches the validation here (which
    names the key) as a string instead of aborting the session inside pytest."""
    import pytest

    unions = tuple(pytest.version_tuple[:2]) >= (9, 2)
    if kind == "int":
        return int | str if unions else "string"
    if kind == "bool":
        return bool | str if unions else "bool"
    return "string"


def add_options(parser) -> None:
    """Register every setting as an ini key and a ``--unlearn-*`` flag."""
    group = parser.getgroup("unlearn", "LLM unlearning guarantees (pytest-unlearn)")
    for opt in OPTIONS:
        dest = f"unlearn_{opt.name}"
        if opt.kind == "bool":
            group.addoption(flag(opt.name), action="store_true", default=None, dest=dest, help=opt.help)
        else:
            group.addoption(flag(opt.name), action="store", default=None, dest=dest,
                            metavar=opt.metavar or None, help=opt.help)
        if opt.ini:
            parser.addini(ini_key(opt.name), opt.help, type=_ini_type(opt.kind),
                          default=False if opt.kind == "bool" else None)


def settings_from_config(config) -> Settings:
    """Read :class:`Settings` from a pytest config (flag wins over ini key)."""
    invocation_dir = Path(config.invocation_params.dir)
    ini_dir = Path(config.inipath).parent if getattr(config, "inipath", None) else invocation_dir
    values: dict[str, Any] = {}
    for opt in OPTIONS:
        value = config.getoption(f"unlearn_{opt.name}", None)
        base = invocation_dir
        from_ini = value is None and opt.ini
        if from_ini:
            value = _read_ini(config, opt)
            base = ini_dir
            if isinstance(value, str):
                value = (value if opt.name in _VERBATIM else value.strip()) if value.strip() else None
            elif isinstance(value, list):  # an empty "string" ini value can read as []
                value = None
        if value is None:
            continue
        if opt.kind == "path":
            text = os.path.expanduser(str(value))
            resolved = (base / text).resolve()
            if from_ini:
                _check_inline_comment(opt.name, text, base, resolved)
            value = str(resolved)
            if opt.name == "report" and text.endswith(("/", os.sep)):
                value += os.sep  # a trailing slash names a folder to write the report into
        elif opt.kind == "bool":
            value = _to_bool(opt.name, value)
        elif opt.kind == "int":
            value = _to_int(opt.name, value)
        elif opt.kind == "str":
            value = str(value) if opt.name in _VERBATIM else str(value).strip()
        values[opt.name] = value
    return Settings(**values)


def _read_ini(config, opt: Option) -> Any:
    """``config.getini``; a value pytest itself rejects becomes a ConfigError naming the key
    (raised in the tests that use the plugin, not for the whole session)."""
    try:
        return config.getini(ini_key(opt.name))
    except Exception as exc:  # pytest's UsageError / ValueError / TypeError
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        want = {"int": "an integer", "bool": "true or false"}.get(opt.kind, "a string")
        raise ConfigError(f"{ini_key(opt.name)} must be {want}: {text}") from None


_INLINE_COMMENT = re.compile(r"\s[#;]")


def _check_inline_comment(name: str, text: str, base: Path, resolved: Path) -> None:
    """pytest ini files keep an inline ``# comment`` as part of the value: say so when that
    makes a path that does not exist while the part before the comment would."""
    match = _INLINE_COMMENT.search(text)
    if match is None or resolved.exists():
        return
    head = text[:match.start()].strip()
    hint = f" (without it: {head!r}, which exists)" if head and (base / head).exists() else ""
    raise ConfigError(f"{ini_key(name)} = {text!r} does not exist: pytest ini files keep an inline comment as "
                      f"part of the value{hint}; put the comment on a line of its own")


def worker_device(device: str, worker: str | None = None) -> str:
    """Pin xdist workers to GPUs: with ``device`` ``auto`` under pytest-xdist and several
    CUDA devices, worker ``gwK`` uses ``cuda:(K mod count)``; otherwise ``device`` as is."""
    worker = worker if worker is not None else os.environ.get("PYTEST_XDIST_WORKER")
    if str(device or "auto").strip().lower() != "auto" or not worker:
        return device
    digits = "".join(ch for ch in worker if ch.isdigit())
    if not digits:
        return device
    import torch

    if not torch.cuda.is_available():
        return device
    count = torch.cuda.device_count()
    if count < 2:
        return device
    return f"cuda:{int(digits) % count}"
