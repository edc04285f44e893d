"""The Fréchet distance against its closed forms."""
from __future__ import annotations

import numpy as np
import pytest

from pipelines.infer.quality import frechet_distance


def test_identical_sets_are_at_distance_zero():
    x = np.random.default_rng(0).normal(size=(500, 6))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)


def test_a_shifted_mean_adds_its_squared_length():
    x = np.random.default_rng(1).normal(size=(400, 5))
    shift = np.array([3.0, 0.0, -4.0, 0.0, 0.0])
    assert frechet_distance(x, x + shift) == pytest.approx(25.0, rel=1e-6)


def test_isotropic_gaussians_match_the_closed_form():
    """N(0, a^2 I) vs N(0, b^2 I) in k dimensions: k (a - b)^2 (for the sample covariances: exactly
    when one set is the other scaled)."""
    x = np.random.default_rng(2).normal(size=(2000, 4))
    x -= x.mean(axis=0)  # both means exactly 0
    cov = np.cov(x, rowvar=False)
    expected = np.trace(cov) * (1 - 3) ** 2  # scaling by 3: Tr(C + 9C - 2 * 3C) = 4 Tr(C)
    assert frechet_distance(x, 3 * x) == pytest.approx(expected, rel=1e-6)


def test_it_is_symmetric():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(300, 3)), rng.normal(loc=1.0, scale=2.0, size=(300, 3))
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-9)
