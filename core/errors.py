"""Every error Lookalike reports to a person, in one place.

Each class is named for what went wrong and carries the one HTTP status the web tier answers
with (``status``), the machine-readable ``code`` of the JSON error body, and the exit status of
the ``lookalike`` command (``exit_code``); the message is what both show. ``web.errors`` and
``cli.main`` turn these into responses and command-line messages; nothing else maps them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class LookalikeError(Exception):
    """Base of every error Lookalike reports to a user."""

    status: int = 500
    code: str = "internal_error"
    exit_code: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def cli_message(self) -> str:
        """The line the command line prints for this error."""
        return self.message


class InvalidImage(LookalikeError):
    """A file that cannot be used as a product photo (not an image, truncated, too large...)."""

    status = 400
    code = "invalid_image"


class InvalidProductId(LookalikeError):
    """A product id that cannot be used in addresses and file names, or is given twice."""

    status = 400
    code = "invalid_product_id"


@dataclass(frozen=True)
class Rejected:
    """One file of a request that was refused, and why."""

    filename: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"file": self.filename, "error": self.message}


class UploadRejected(LookalikeError):
    """Every file of a request was refused; nothing was stored."""

    status = 400
    code = "invalid_upload"

    def __init__(self, rejected: Sequence[Rejected]) -> None:
        details = "; ".join(f"{r.filename}: {r.message}" for r in rejected)
        super().__init__(f"no usable image in the request ({details})")
        self.rejected = list(rejected)


class CatalogueError(LookalikeError):
    """A catalogue folder that cannot be read at all."""

    status = 400
    code = "invalid_catalogue"


class ProductNotFound(LookalikeError):
    status = 404
    code = "product_not_found"

    def __init__(self, product_id: str) -> None:
        super().__init__(f"no product with id {product_id!r}")
        self.product_id = product_id


class JobNotFound(LookalikeError):
    status = 404
    code = "job_not_found"

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job with id {job_id!r}")
        self.job_id = job_id


class NotIndexed(LookalikeError):
    """The product exists but has no vector (or no neighbour list) under the current model."""

    status = 409
    code = "not_indexed"


class ModelMismatch(LookalikeError):
    """Vectors of two different model ids were about to be compared."""

    status = 409
    code = "model_mismatch"


class InvalidRequest(LookalikeError):
    """A request whose form or parameters cannot be understood."""

    status = 400
    code = "bad_request"


class InvalidMetadata(InvalidRequest):
    """Product metadata that cannot be stored and read back everywhere (``core.metadata``);
    the API answers it as any other bad request (``bad_request``), as it did for bad JSON."""


class Unauthorized(LookalikeError):
    status = 401
    code = "unauthorized"


class CrossSiteRequest(LookalikeError):
    """A write to the API sent by a browser from another site's page (no token is set, so the
    request's origin is all that tells the service's own pages from someone else's)."""

    status = 403
    code = "cross_site_request"


class DatabaseUnavailable(LookalikeError):
    """The database cannot be reached, or does not exist."""

    status = 503
    code = "database_unavailable"


class InvalidSetting(LookalikeError):
    """A ``LOOKALIKE_*`` setting, or a combination of them, that cannot work (a layer that needs
    another input size, one pooling too many...): the operator's to fix, not the request's."""

    status = 500
    code = "invalid_setting"
    exit_code = 2

    def cli_message(self) -> str:
        return f"invalid setting: {self.message}"


class WeightsUnavailable(LookalikeError):
    """The requested model weights are not on disk and cannot be fetched."""

    status = 503
    code = "weights_unavailable"


class QueueUnavailable(LookalikeError):
    """The job was recorded but could not be handed to the workers."""

    status = 503
    code = "queue_unavailable"
