"""Inputs and machine description shared by the SmolLM2 benchmark scripts: the example
suite's models and data as defaults, a friendly exit when they are missing."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "example_suites" / "smollm2"
DEFAULT_MODEL = SUITE / ".models" / "original"
DEFAULT_FORGET = SUITE / "data" / "forget.jsonl"
DEFAULT_RETAIN = SUITE / "data" / "retain.jsonl"
BUILD_COMMAND = "python example_suites/smollm2/build_models.py"


def check_inputs(model: Path, files: list[Path]) -> None:
    """Exit 2 with what to do when the model or a data file is missing."""
    if not (model / "config.json").is_file() and not model.is_file():
        if model.resolve() == DEFAULT_MODEL.resolve():
            print(f"the example suite's model {model} is missing; build it with:\n    {BUILD_COMMAND}",
                  file=sys.stderr)
        else:
            print(f"{model}: no model folder or file there", file=sys.stderr)
        sys.exit(2)
    for f in files:
        if not f.is_file():
            print(f"{f}: no such data file", file=sys.stderr)
            sys.exit(2)


def machine_line(torch) -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (f"machine: {platform.machine()} {platform.system()}, {os.cpu_count()} CPUs, python "
            f"{platform.python_version()}, torch {torch.__version__}, {torch.get_num_threads()} torch threads, "
            f"load average {load}")
