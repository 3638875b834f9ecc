"""Commands that read a journal: status and report."""

from __future__ import annotations

import argparse
from typing import Any


def add_view_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    return None
