"""The checks every product id and every product's metadata pass, wherever they enter: the
API's upload form, a catalogue's ``styles.csv`` and the file names of a plain folder.

Metadata is stored in a JSON column and read back by PostgreSQL's ``->>`` (filters), by
orjson (the storefront's read) and by browsers, so it is held to what all of them take: a
JSON object of bounded size and depth, keys that are non-empty text, no NUL character in any
key or value (PostgreSQL cannot extract one from JSON), finite numbers, integers that fit in
64 bits, and no top-level key that a response sets beside the metadata.
"""

from __future__ import annotations

import math
import re
from typing import Any

import orjson

from core.errors import InvalidMetadata, InvalidProductId
from core.models import PRODUCT_ID_LENGTH

# The fields a JSON response puts beside a product's metadata (``web.api.product_json`` and
# the neighbours of ``/similar``): a metadata key of that name would read as the service's own.
RESERVED_KEYS = frozenset({"id", "image_url", "rank", "score"})
MAX_BYTES = 16 * 1024  # the whole object, as compact JSON
MAX_DEPTH = 8  # the object itself is depth 1
MAX_KEY_LENGTH = 128
MAX_STRING_LENGTH = 4096
_INT_RANGE = range(-(2**63), 2**63)
_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def validate_product_id(product_id: str) -> str:
    """A product id usable in URLs, file names and the id column, on every database.

    Raises:
        InvalidProductId: the id is empty, longer than the column, or has characters other
            than letters, digits, '.', '_' and '-' (or starts with one of the last three).
    """
    if len(product_id) > PRODUCT_ID_LENGTH or not _ID_PATTERN.fullmatch(product_id):
        shown = product_id if len(product_id) <= 40 else f"{product_id[:40]}..."
        raise InvalidProductId(
            f"invalid product id {shown!r} ({len(product_id)} characters): use up to "
            f"{PRODUCT_ID_LENGTH} letters, digits, '.', '_' or '-', starting with a letter "
            "or digit"
        )
    return product_id


def parse_metadata(raw: str | bytes) -> dict[str, Any]:
    """Metadata sent as JSON text, parsed and checked.

    Raises:
        InvalidMetadata: the text is too long, not JSON (``NaN`` is not JSON), or its value
            fails ``validate_metadata``.
    """
    size = len(raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw)
    if size > MAX_BYTES:
        raise InvalidMetadata(f"metadata is {size:,} bytes, over the limit of {MAX_BYTES:,}")
    try:
        # orjson: strict JSON (no NaN or Infinity), no lone surrogates, and a depth limit of
        # its own, so deep nesting is an error here instead of a RecursionError.
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidMetadata(f"metadata is not valid JSON: {exc}") from None
    return validate_metadata(value)


def validate_metadata(meta: object) -> dict[str, Any]:
    """``meta`` if it can be stored as a product's metadata.

    Raises:
        InvalidMetadata: not an object, a reserved or unusable key, a NUL character, a
            number that is not finite or too large, nesting deeper than ``MAX_DEPTH``, a
            string longer than ``MAX_STRING_LENGTH``, or more than ``MAX_BYTES`` in all.
    """
    if not isinstance(meta, dict):
        raise InvalidMetadata("metadata must be a JSON object")
    reserved = sorted(RESERVED_KEYS.intersection(meta))
    if reserved:
        raise InvalidMetadata(
            f"metadata key {reserved[0]!r} is reserved: responses set "
            f"{', '.join(sorted(RESERVED_KEYS))} themselves"
        )
    _check(meta, "metadata", 1)
    size = len(orjson.dumps(meta))
    if size > MAX_BYTES:
        raise InvalidMetadata(f"metadata is {size:,} bytes, over the limit of {MAX_BYTES:,}")
    return meta


def _check(value: object, where: str, depth: int) -> None:
    if isinstance(value, str):
        _check_text(value, where, MAX_STRING_LENGTH)
    elif isinstance(value, bool) or value is None:
        pass
    elif isinstance(value, int):
        if value not in _INT_RANGE:
            raise InvalidMetadata(f"{where} is an integer too large to store (64 bits at most)")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidMetadata(f"{where} is {value}: numbers must be finite")
    elif isinstance(value, dict | list):
        if depth > MAX_DEPTH:
            raise InvalidMetadata(f"metadata is nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, list):
            for index, item in enumerate(value):
                _check(item, f"{where}[{index}]", depth + 1)
            return
        for key, item in value.items():
            if not isinstance(key, str) or not key:
                raise InvalidMetadata(f"{where} has a key that is not non-empty text: {key!r}")
            _check_text(key, f"key {key[:40]!r} of {where}", MAX_KEY_LENGTH)
            _check(item, f"{where}[{key[:40]!r}]", depth + 1)
    else:
        raise InvalidMetadata(f"{where} is a {type(value).__name__}, not a JSON value")


def _check_text(text: str, where: str, most: int) -> None:
    if len(text) > most:
        raise InvalidMetadata(f"{where} is {len(text):,} characters long, over {most:,}")
    if "\x00" in text:
        raise InvalidMetadata(f"{where} contains a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidMetadata(f"{where} is not valid Unicode (a lone surrogate)") from None
