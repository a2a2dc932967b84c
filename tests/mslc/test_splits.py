import numpy as np
import pytest

from mslc.splits import balanced_split

Y = np.repeat(np.arange(10), 100)


def test_meta_and_val_are_clean_balanced_and_disjoint_from_train():
    s = balanced_split(Y, n_meta=100, n_val=50, seed=0)
    assert len(s.meta) == 100 and len(s.val) == 50 and len(s.train) == 850
    assert not set(s.meta) & set(s.train)
    assert not set(s.val) & set(s.train)
    assert not set(s.meta) & set(s.val)
    assert sorted(np.concatenate([s.train, s.meta, s.val]).tolist()) == list(range(len(Y)))
    assert np.bincount(Y[s.meta]).tolist() == [10] * 10
    assert np.bincount(Y[s.val]).tolist() == [5] * 10


def test_seeded():
    a, b, c = (balanced_split(Y, n_meta=30, n_val=0, seed=k) for k in (1, 1, 2))
    np.testing.assert_array_equal(a.meta, b.meta)
    assert (a.meta != c.meta).any()


def test_uneven_sizes_spread_and_too_small_class_errors():
    s = balanced_split(Y, n_meta=15, n_val=0, seed=0)
    assert sorted(np.bincount(Y[s.meta]).tolist()) == [1] * 5 + [2] * 5
    with pytest.raises(ValueError, match="class 0 has 100 samples"):
        balanced_split(Y, n_meta=1000, n_val=100, seed=0)
