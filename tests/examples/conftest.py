"""Module-scoped example fixtures must see the same isolated cache as the function-scoped
`isolated_cache` fixture of tests/conftest.py (which they cannot depend on)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="module")
def example_cache(tmp_path_factory):
    shared = os.environ.get("TRIMTAB_TEST_CACHE")
    root = shared if shared else str(tmp_path_factory.getbasetemp() / "trimtab-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRIMTAB_CACHE", root)
        yield root
