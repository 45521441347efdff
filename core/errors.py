"""Domain exceptions. Each carries the HTTP status the web tier answers with."""

from __future__ import annotations


class LookalikeError(Exception):
    """Base of every error Lookalike reports to a user."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidImage(LookalikeError):
    """A file that cannot be used as a product photo (not an image, truncated, too large...)."""

    status = 400
    code = "invalid_image"


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


class NotIndexed(LookalikeError):
    """The product exists but has no vector (or no neighbour list) under the current model."""

    status = 409
    code = "not_indexed"


class WeightsUnavailable(LookalikeError):
    """The requested model weights are not on disk and cannot be fetched."""

    status = 503
    code = "weights_unavailable"


class ModelMismatch(LookalikeError):
    """Vectors of two different model ids were about to be compared."""

    status = 409
    code = "model_mismatch"


class InvalidRequest(LookalikeError):
    """A request whose form or parameters cannot be understood."""

    status = 400
    code = "bad_request"


class Unauthorized(LookalikeError):
    status = 401
    code = "unauthorized"


class QueueUnavailable(LookalikeError):
    """The job was recorded but could not be handed to the workers."""

    status = 503
    code = "queue_unavailable"
