"""What went wrong talking to the service, said so that an operator can act on it (pure).

A bare ``HTTP 403: AuthenticationFailed ...`` does not say which account refused, at which
endpoint, or what to check; "the Batch service answered: could not connect" claims an answer
where nothing answered. ``describe`` says where (the account and the endpoint, set on the
error by ``locate`` where they are known), what happened (refused, never reached, no answer
in time, answered with an error) and, for the common causes, what to check.
"""

from __future__ import annotations

from .errors import (
    AuthFailed,
    BatchError,
    BatchHTTPError,
    ConfigurationError,
    RequestInDoubt,
    RequestNotSent,
)


def locate(
    error: BatchError, *, account: str, endpoint: str, credential: str | None = None
) -> BatchError:
    """Record where ``error`` happened (what is already set is kept); returns it."""
    if error.account is None:
        error.account = account
    if error.endpoint is None:
        error.endpoint = endpoint
    if error.credential is None:
        error.credential = credential
    return error


def where(error: BatchError) -> str:
    """``account prod-westus2 (https://...)``, or what is known of it."""
    if error.account and error.endpoint:
        return f"account {error.account} ({error.endpoint})"
    if error.endpoint:
        return error.endpoint
    return f"account {error.account}" if error.account else "the Batch service"


def describe(error: BatchError) -> str:
    """One message, for the last line of a failed command or a run's stop reason."""
    if isinstance(error, AuthFailed):
        return f"{where(error)} refused our credentials: {error.summary()}. " + auth_advice(error)
    if isinstance(error, RequestNotSent):
        target = error.endpoint or "the Batch endpoint"
        account = f" (account {error.account})" if error.account else ""
        return (
            f"could not connect to {target}{account}: {_why_not(error)}; nothing answered. "
            "Check the "
            "endpoint's address, DNS and the network path to it (no proxy is used)"
        )
    if isinstance(error, RequestInDoubt):
        return f"{where(error)} did not answer in time: {error}"
    if isinstance(error, BatchHTTPError):
        return f"the Batch service at {where(error)} answered: {error.summary()}"
    if isinstance(error, ConfigurationError):
        return str(error)
    return f"{where(error)}: {error}"


def auth_advice(error: BatchError) -> str:
    """What to check when an account refuses us (401/403)."""
    how = f" ({error.credential})" if error.credential else ""
    if error.credential and "Entra" in error.credential:
        return (
            f"Check that the identity{how} has a role on this Batch account and that the "
            "endpoint is the account's"
        )
    return (
        f"Check the account name and the key{how}: a misspelt account name and a wrong or "
        "rotated key are both answered 403 AuthenticationFailed"
    )


def retry_message(endpoint: str, error: BatchError, attempt: int, delay: float) -> str:
    """While a read is retried: ``https://... did not answer ...: retrying (attempt 3,
    next in 4 s)`` -- an operator waiting on a prompt must not be left in silence."""
    if isinstance(error, RequestNotSent):
        what = f"could not connect to {endpoint} ({_why_not(error)})"
    elif isinstance(error, BatchHTTPError):
        what = f"{endpoint} answered {error.summary()}"
    else:
        what = f"{endpoint} did not answer ({error})"
    if delay < 0.0005:
        when = "at once"
    elif delay < 0.1:  # a rate limit's Retry-After may be milliseconds: never "0.0 s"
        when = f"{round(delay * 1000)} ms"
    else:
        when = f"{delay:.1f} s" if delay < 10 else f"{delay:.0f} s"
    return f"{what}: retrying (attempt {attempt}, next in {when})"


def _why_not(error: RequestNotSent) -> str:
    """The transport's reason, without its own "could not connect" (said already)."""
    return str(error).removeprefix("could not connect: ")
