"""The bearer check (the server-level 401s are in test_server.py)."""

from __future__ import annotations

from kernel_core.server.auth import key_matches


def test_only_bearer_with_the_exact_key_matches():
    assert key_matches("Bearer sk-1", "sk-1")
    assert key_matches("bearer sk-1", "sk-1")
    for header in (None, "", "Bearer", "Bearer ", "Bearer sk-2", "Bearer sk-1x", "Bearer sk-", "Basic sk-1", "sk-1"):
        assert not key_matches(header, "sk-1"), header


def test_non_ascii_keys_compare_as_bytes():
    assert key_matches("Bearer clé", "clé")
    assert not key_matches("Bearer cle", "clé")
