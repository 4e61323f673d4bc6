"""One exception hierarchy; the CLI turns each into a one-line message and an exit code."""

from __future__ import annotations


class FairrayError(Exception):
    """Base class of every error fairray raises on purpose."""

    exit_code = 1


class ConfigError(FairrayError):
    """A sweep spec or an override is invalid (file, key path and value are in the message)."""

    exit_code = 2


class DataError(FairrayError):
    """Input data is missing or malformed."""

    exit_code = 2


class RegistryError(FairrayError):
    """An unknown plugin name; the message lists the registered ones."""

    exit_code = 2


class TrackingError(FairrayError):
    """MLflow holds nothing usable for the request (no sweep, no finished trial ...)."""

    exit_code = 1


class ClusterError(FairrayError):
    """The Ray cluster named by ``--address`` cannot be joined."""

    exit_code = 1


class TrialError(FairrayError):
    """A trial diverged or produced a metric that cannot be reported (NaN, inf)."""
