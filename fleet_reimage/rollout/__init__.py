"""Pure policies: what may happen, decided apart from the loop that makes it happen.

``policy.py`` decides a pool's rollout (waves, pauses, checkpoints, max_unavailable, the failure
budget) for every journal; ``pool.py`` and ``claimed.py`` keep a pool's targets for a run alone
and a shared run; ``budget.py``, ``throttle.py`` and ``outcomes.py`` decide the failure budget,
an account's pace and what an answer means."""
