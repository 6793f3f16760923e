"""Shared fixtures: a small real corpus (built once per session) and run configs for it."""

from __future__ import annotations

import pytest

from tests.corpus_fixture import build_test_corpus


@pytest.fixture(scope="session")
def test_corpus(tmp_path_factory):
    """Directory with domains/, targets/, tokenizer/ and bin/ (see tests/corpus_fixture.py)."""
    return build_test_corpus(tmp_path_factory.mktemp("corpus"))
