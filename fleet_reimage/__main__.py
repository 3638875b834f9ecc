"""``python -m fleet_reimage``: the same as the ``fleet-reimage`` command."""

import sys

from fleet_reimage.cli.main import entry

sys.exit(entry())
