"""``python -m fleet_reimage.emulator --fleet FLEET.yaml ...``: see ``server.emulator_main``."""

from __future__ import annotations

import sys

from .server import emulator_main

if __name__ == "__main__":
    raise SystemExit(emulator_main(sys.argv[1:]))
