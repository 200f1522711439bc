"""Reading OAuth request bodies (RFC 6749 §3.2 and Appendix B).

"The client MUST use the HTTP POST method when making access token requests"; parameters
travel form-encoded in the body, "parameters sent without a value MUST be treated as if they
were omitted", and "request and response parameters MUST NOT be included more than once".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import unquote_plus

from tokensmith.errors import InvalidRequestError

__all__ = ["parse_form", "check_content_type"]

_FORM = "application/x-www-form-urlencoded"
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_PARAM_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


def check_content_type(content_type: str | None) -> None:
    """Refuse any body that is not ``application/x-www-form-urlencoded`` in UTF-8."""
    mimetype, _, params = (content_type or "").partition(";")
    if mimetype.strip().lower() != _FORM:
        raise InvalidRequestError(f"the request body must be {_FORM}")
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise InvalidRequestError("the request body must be UTF-8")


def parse_form(body: bytes) -> Mapping[str, str]:
    """Parse a form body; raise ``InvalidRequestError`` for bad encoding or a repeated name."""
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise InvalidRequestError("the request body is not form-encoded ASCII") from None
    if _BAD_PERCENT.search(text):
        raise InvalidRequestError("the request body has an invalid percent-encoding")
    form: dict[str, str] = {}
    seen: set[str] = set()
    for pair in text.split("&"):
        if not pair:
            continue
        raw_name, _, raw_value = pair.partition("=")
        try:
            name = unquote_plus(raw_name, errors="strict")
            value = unquote_plus(raw_value, errors="strict")
        except UnicodeDecodeError:
            raise InvalidRequestError("a request parameter is not valid UTF-8") from None
        if name in seen:
            shown = f" {name}" if _PARAM_NAME.match(name) else ""
            raise InvalidRequestError(f"parameter{shown} is repeated")
        seen.add(name)
        if value:
            form[name] = value
    return form
