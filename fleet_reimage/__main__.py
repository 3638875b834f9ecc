"""``python -m fleet_reimage``: the same as the ``fleet-reimage`` command."""

import sys

from .cli import entry

sys.exit(entry())
