"""Fixtures for the measure tests."""

from __future__ import annotations

import numpy as np
import pytest
from tests.measure.measure_models import StandInDataset


@pytest.fixture
def stand_in_dataset():
    rng = np.random.default_rng(0)
    return StandInDataset(rng.standard_normal((21, 8)).astype(np.float32), rng.integers(0, 6, 21))
