import subprocess
import sys

import numpy as np
import pytest

from fedbpt.projection import Projection, projection_scale, unit_normal_block

SCRIPT = "from fedbpt.projection import Projection; print(Projection(7, 500, 4, 64, 0.01).fingerprint())"


def test_projection_bytes_identical_across_processes():
    fingerprints = {
        subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True).stdout.strip()
        for _ in range(2)
    }
    assert fingerprints == {Projection(7, 500, 4, 64, 0.01).fingerprint()}


def test_fingerprint_changes_with_every_pinned_setting():
    base = Projection(7, 500, 4, 64, 0.01).fingerprint()
    others = [
        Projection(8, 500, 4, 64, 0.01),
        Projection(7, 400, 4, 64, 0.01),
        Projection(7, 500, 5, 64, 0.01),
        Projection(7, 500, 4, 32, 0.01),
        Projection(7, 500, 4, 64, 0.02),
    ]
    assert all(other.fingerprint() != base for other in others)


def test_entries_are_standard_normal_on_a_float32_grid():
    block = unit_normal_block(3, 0, 400, 500).astype(np.float64)
    assert abs(block.mean()) < 0.01 and abs(block.std() - 1.0) < 0.01
    assert np.all(block * 2**16 == np.round(block * 2**16))
    assert not np.array_equal(block, unit_normal_block(3, 1, 400, 500))


def test_projection_is_linear_and_scaled():
    projection = Projection(1, 50, 3, 16, 0.5)
    z = np.random.default_rng(0).normal(size=(4, 50))
    prompts = projection(z)
    assert prompts.shape == (4, 3, 16) and prompts.dtype == np.float32
    expected = 0.5 * np.einsum("thd,pd->pth", np.stack([projection.block(t) for t in range(3)]), z)
    np.testing.assert_allclose(prompts, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(projection(z[0]), prompts[0], rtol=1e-5, atol=1e-5)


def test_projection_scale_is_embedding_std_over_root_dim():
    assert projection_scale(0.05, 400) == pytest.approx(0.05 / 20)


def test_a_unit_step_in_z_moves_prompts_by_about_the_embedding_std():
    dim, embedding_std = 500, 0.05
    projection = Projection(2, dim, 8, 64, projection_scale(embedding_std, dim))
    z = np.random.default_rng(1).normal(size=(16, dim))
    assert projection(z).std() == pytest.approx(embedding_std, rel=0.1)
    assert projection(0.3 * z).std() == pytest.approx(0.3 * embedding_std, rel=0.1)


def test_wrong_shape_is_refused():
    with pytest.raises(ValueError, match="expected z of shape"):
        Projection(1, 50, 3, 16, 0.5)(np.zeros(49))


def test_large_projection_is_not_cached():
    projection = Projection(1, 50, 3, 16, 0.5, cache_limit_bytes=1000)
    first = projection(np.ones(50))
    assert projection._blocks == {}
    np.testing.assert_array_equal(first, projection(np.ones(50)))
