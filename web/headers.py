"""Headers every response carries, and the media type a stored photo is served with."""

from __future__ import annotations

import os

from flask import Flask
from PIL import Image, UnidentifiedImageError
from werkzeug.exceptions import NotFound
from werkzeug.wrappers import Response

# The pages load their script, style and photos from this origin only and have no inline
# script or style; blob: is the preview of a photo picked on the search and add pages.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "img-src 'self' blob:",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("Referrer-Policy", "same-origin"),
)


def add_security_headers(response: Response) -> Response:
    # The same constant pairs on every response, the lookalikes read included: appended, not
    # computed per request.
    response.headers.extend(SECURITY_HEADERS)
    return response


def register(app: Flask) -> None:
    app.after_request(add_security_headers)


def stored_image_type(path: str | os.PathLike[str]) -> str:
    """The media type of a stored photo, from its content (a catalogue file's name may say
    nothing, or lie); only the header is read.

    Raises:
        NotFound: the file is gone, or is not an image a browser could be sent.
    """
    try:
        with Image.open(path) as img:
            fmt = img.format
    except FileNotFoundError:
        raise NotFound("this product's photo is no longer stored") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError):
        fmt = None
    mimetype = Image.MIME.get(fmt or "")
    if mimetype is None or not mimetype.startswith("image/"):
        raise NotFound("this product's stored photo is not an image that can be served")
    return mimetype
