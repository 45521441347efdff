"""The OpenAPI 3 description of the JSON API: ``openapi.yaml`` beside this module, read once per
process and served at ``GET /api/openapi.json`` (``tests/test_openapi.py`` keeps it true)."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import yaml


@cache
def _document() -> dict[str, Any]:
    text = resources.files("web").joinpath("openapi.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)  # type: ignore[no-any-return]


def openapi_document(script_root: str = "") -> dict[str, Any]:
    """The description, with the address the API is served under as its one server (a
    relative URL, so a path prefix in front of the app shows in the document)."""
    return {**_document(), "servers": [{"url": script_root or "/"}]}
