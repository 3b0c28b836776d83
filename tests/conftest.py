"""Shared test helpers: where the real speech clips are."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SPEECH = REPO.parent / "shared" / "testdata" / "speech"
FIXTURES = REPO / "tests" / "fixtures"


@pytest.fixture(scope="session")
def speech_dir() -> Path:
    if not SPEECH.is_dir():
        pytest.skip(f"speech clips not found at {SPEECH}")
    return SPEECH
