"""A stand-in for a monitoring query, used as a gate by plans/night.yaml.

It prints the pool and wave it was asked about and exits 1 (the gate fails, the run stops
resumable) when the environment says an alert is firing: ``ALERTS_FIRING=1``, from wave 2 on.
A real gate would ask Prometheus, a smoke-test job or the change ticket instead.
"""

import os
import sys

wave = os.environ["FLEET_REIMAGE_WAVE"]
print(f"pool {sys.argv[sys.argv.index('--pool') + 1]}: wave {wave}")
if os.environ.get("ALERTS_FIRING") == "1" and wave != "1":
    print("ALERT RenderQueueLatencyHigh firing")
    sys.exit(1)
print("all SLOs green")
