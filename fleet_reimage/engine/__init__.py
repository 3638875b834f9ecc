"""The run engine: the task loop, one node's work, the health gate, shared runs, and starting
or resuming a run. It asks the pure policies of ``rollout/`` what may happen and records
everything in the ``journal/`` before and after each call of the ``batch/`` client.

Composed, not inherited: ``executor.Executor`` owns the loop and hands each part the run's
ledger (``ledger.RunLedger``: the state and every change to it) and itself as
``control.RunControl`` (stop, wake, run beside); ``slots.SendSlots`` keeps every in-flight
count. No module of the engine imports the executor."""
