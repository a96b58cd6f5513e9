"""Test double: the smallest prefix-caching cache manager, so the suite's prefix tests run."""
