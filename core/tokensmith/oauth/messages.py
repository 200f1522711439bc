"""What an endpoint reads and what it answers, free of any web framework.

The OAuth endpoints (``oauth/endpoints.py``) take an ``HttpRequest`` and return an ``Answer``;
``app/`` builds the one from Quart's or a raw ASGI request and renders the other, in one place
(``app/front.py``), whichever way the request came in.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Headers", "HttpRequest", "Answer", "JSON"]

JSON = "application/json"


class Headers(Mapping[str, str]):
    """A request's headers, looked up case-insensitively (the last of repeated names wins):
    what plugins see (``ClientAuthRequest.headers``), whose header names come from their
    configuration in any case. *raw* is the ASGI field list, or a dict of lower-case names
    (``HttpRequest.headers``)."""

    __slots__ = ("_items",)

    def __init__(self, raw: list[tuple[bytes, bytes]] | Mapping[str, str]):
        if isinstance(raw, Mapping):
            self._items = {name.lower(): value for name, value in raw.items()}
        else:
            self._items = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in raw}

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()]

    def get(self, name: str, default: Any = None) -> Any:
        return self._items.get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class HttpRequest:
    """What an endpoint needs of one HTTP request: its ASGI scope, headers and whole body.

    ``headers`` is looked up with lower-case names (the fast lane makes it a plain dict, the
    last of repeated names winning: a dict lookup is all the hot path pays); ``Headers``
    takes any case. The addresses are read from the scope once, when the request is made
    (``app.front.http_request``).
    """

    scope: Mapping[str, Any]
    headers: Mapping[str, str]
    body: bytes
    query_string: bytes
    #: The peer's address.
    remote_addr: str | None
    #: The client's own address: the one a trusted proxy forwarded (put into the scope by the
    #: app's front), else the peer's.
    client_address: str | None


@dataclass
class Answer:
    """An endpoint's response: a JSON body (None: empty) and extra headers.

    ``no_store``: whether the answer carries ``Cache-Control: no-store`` and ``Pragma: no-cache``
    (RFC 6749 §5.1 for token responses; every answer that names a client or token has them).
    """

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = JSON
    no_store: bool = True
