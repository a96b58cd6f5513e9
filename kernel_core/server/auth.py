"""``--api-key``: every route but :data:`OPEN_PATHS` then requires ``Authorization: Bearer <key>``.

The key is compared with :func:`hmac.compare_digest` on bytes, so the time taken does not reveal
how many leading characters of a guess were right. ``/health`` and ``/metrics`` stay open for
probes and scrapers (they carry counters, no text). ``/tokenize`` and ``/detokenize`` need the key
too: they read no model output, but tokenizing megabytes of text is work an anonymous client
should not get for free.
"""

from __future__ import annotations

import hmac

from fastapi import Request

from kernel_core.server.errors import APIError

#: Read by ``kcore serve`` when ``--api-key`` is not given.
ENV_API_KEY = "KERNEL_CORE_API_KEY"
#: Routes answered without the key (and the schema at ``/openapi.json``).
OPEN_PATHS = frozenset({"/health", "/metrics"})


def key_matches(header: str | None, key: str) -> bool:
    """True if ``header`` is ``Bearer <key>`` (scheme case-insensitive); constant time in the key."""
    scheme, _, token = (header or "").partition(" ")
    expected = key.encode("utf-8")
    given = token.strip().encode("utf-8")
    # compare_digest even on a wrong scheme, so a malformed header takes the same path
    return hmac.compare_digest(given, expected) and scheme.lower() == "bearer"


async def require_api_key(request: Request) -> None:
    """FastAPI dependency of every router but the open routes: 401 in OpenAI's body without the key."""
    key = request.app.state.kcore.settings.api_key
    if key is None:
        return
    if not key_matches(request.headers.get("authorization"), key):
        raise APIError(
            401,
            "Missing or incorrect API key: send it as `Authorization: Bearer <key>`.",
            code="invalid_api_key",
        )
