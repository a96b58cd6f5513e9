"""Paged KV-cache manager for kernel-core: block pool bookkeeping with prefix caching."""
