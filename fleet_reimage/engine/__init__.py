"""The run engine: the task loop, one node's work, the health gate, shared runs, and starting
or resuming a run. It asks the pure policies of ``rollout/`` what may happen and records
everything in the ``journal/`` before and after each call of the ``batch/`` client."""
