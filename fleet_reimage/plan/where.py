"""Which account of the plan an error came from, for messages that name it (pure)."""

from __future__ import annotations

from fleet_reimage.batch.errors import BatchError
from fleet_reimage.batch.explain import locate

from .model import AccountSpec, EntraAuth, Plan, SharedKeyAuth


def credential_text(account: AccountSpec) -> str:
    """How the plan signs in to the account, in words (names only, never a secret)."""
    auth = account.auth
    if isinstance(auth, SharedKeyAuth):
        source = f"${auth.key_env}" if auth.key_env else str(auth.key_file)
        return f"auth.account {auth.account}, key from {source}"
    if isinstance(auth, EntraAuth):
        return f"Microsoft Entra ID, credential {auth.credential}"
    return "the local emulator's key"


def locate_in(error: BatchError, account: AccountSpec, endpoint: str) -> BatchError:
    """``error`` with the account, its endpoint and how we signed in recorded on it."""
    return locate(
        error, account=account.name, endpoint=endpoint, credential=credential_text(account)
    )


def locate_in_plan(error: BatchError, plan: Plan, account: str, endpoint: str) -> BatchError:
    """As ``locate_in``, for the account of ``plan`` named ``account``."""
    spec = next((a for a in plan.accounts if a.name == account), None)
    if spec is None:
        return locate(error, account=account, endpoint=endpoint)
    return locate_in(error, spec, endpoint)
