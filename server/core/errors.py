"""Domain errors a caller can act on. Transport-free: `server/api/status.py` maps each class to a gRPC code."""

from __future__ import annotations


class ServiceError(Exception):
    """An error the caller can act on. `field` names the request field at fault, if any."""

    def __init__(self, message: str, field: str | None = None) -> None:
        self.message = f"{field}: {message}" if field else message
        self.field = field
        super().__init__(self.message)

    def prefixed(self, prefix: str) -> ServiceError:
        """The same error with its position in a batch named first (`requests[3]: ...`)."""
        self.message = f"{prefix}: {self.message}"
        self.args = (self.message,)
        return self


class InvalidInput(ServiceError):
    """The request is malformed: fixing the named field fixes it."""


class NotFound(ServiceError):
    """The named image or model version does not exist (or is not visible to the caller)."""


class ResourceExhausted(ServiceError):
    """Over a configured limit, or the server is too busy to finish the request in time."""


class Unavailable(ServiceError):
    """A dependency (the encoder, the vector store) is down: safe to retry later."""


class DeadlineExceeded(ServiceError):
    """The caller's deadline passed before the work could finish."""


class FailedPrecondition(ServiceError):
    """The system is not in a state that allows the call (e.g. another model switch is running)."""


class Unauthenticated(ServiceError):
    """No credentials, or credentials that do not verify (expired, unknown key, bad signature)."""


class PermissionDenied(ServiceError):
    """The caller is known but its role or owners do not allow this."""
