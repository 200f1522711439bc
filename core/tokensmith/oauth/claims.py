"""The claim names the server owns: one list, for JWT access tokens and for interceptors.

``TOKEN_CLAIMS`` are what ``jwt.access_token_claims`` sets itself, plus ``nbf``: RFC 7519
§4.1's registered claims, and RFC 9068 §2.2's ``client_id`` and ``scope`` and RFC 8705 §3.1's
``cnf`` for an access token. Extra claims may not replace them.

``REGISTERED_CLAIMS`` adds the names that describe a token elsewhere: RFC 7662 §2.2's
introspection members (``active``, ``token_type``, ``username``) and RFC 9068 §2.2.1's
authentication information (``auth_time``, ``acr``, ``amr``), which only the server may
assert. An interceptor's ``pre_token_issue`` may set none of them.
"""

from __future__ import annotations

__all__ = ["REQUIRED_CLAIMS", "TOKEN_CLAIMS", "REGISTERED_CLAIMS"]

#: RFC 9068 §2.2: the claims every JWT access token carries.
REQUIRED_CLAIMS = ("iss", "exp", "aud", "sub", "client_id", "iat", "jti")
TOKEN_CLAIMS = frozenset({*REQUIRED_CLAIMS, "nbf", "scope", "cnf"})
REGISTERED_CLAIMS = TOKEN_CLAIMS | {"active", "token_type", "username", "auth_time", "acr", "amr"}
