import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mslc.bank import LocalBank

N, C = 12, 4
LABELS = np.arange(N) % C


def rows(n, seed):
    return torch.softmax(torch.randn(n, C, generator=torch.Generator().manual_seed(seed)), 1)


@pytest.mark.parametrize("refresh", ["epoch", "step"])
def test_unvisited_rows_keep_their_values_never_zero(refresh):
    bank = LocalBank(LABELS, C, refresh=refresh)
    onehot = F.one_hot(torch.as_tensor(LABELS), C).float()
    visited = torch.tensor([0, 3, 5])
    new = rows(3, 0)
    bank.put(visited, y_hat=new, y_tilde=new)
    for _ in range(3):
        bank.end_epoch()
    t = bank.table()
    rest = np.setdiff1d(np.arange(N), visited.numpy())
    np.testing.assert_array_equal(t["y_tilde"][rest], onehot.numpy()[rest])
    np.testing.assert_allclose(t["y_tilde"][visited.numpy()], new.numpy(), rtol=1e-6)
    assert (t["y_tilde"].sum(1) > 0.99).all()
    assert np.isnan(t["alpha"][rest]).all()


def test_epoch_policy_publishes_at_epoch_end_step_policy_at_once():
    idx = torch.tensor([1, 2])
    new = rows(2, 1)
    for refresh, visible_now in (("epoch", False), ("step", True)):
        bank = LocalBank(LABELS, C, refresh=refresh)
        bank.put(idx, y_hat=new, y_tilde=new)
        _, prev = bank.rows(idx)
        assert torch.allclose(prev, new) == visible_now
        bank.end_epoch()
        assert torch.allclose(bank.rows(idx)[1], new)


def test_warmup_mean_of_accumulated_predictions():
    bank = LocalBank(LABELS, C)
    idx = torch.tensor([0, 1, 0])  # row 0 seen twice
    p1, p2 = rows(3, 2), rows(2, 3)
    bank.accumulate(idx, p1)
    bank.accumulate(torch.tensor([1, 4]), p2)
    bank.finish_warmup()
    t = bank.table()
    np.testing.assert_allclose(t["y_tilde"][0], ((p1[0] + p1[2]) / 2).numpy(), rtol=1e-6)
    np.testing.assert_allclose(t["y_tilde"][1], ((p1[1] + p2[0]) / 2).numpy(), rtol=1e-6)
    np.testing.assert_allclose(t["y_tilde"][4], p2[1].numpy(), rtol=1e-6)
    np.testing.assert_array_equal(t["y_tilde"][2], F.one_hot(torch.tensor(2), C).numpy())  # never seen
    np.testing.assert_allclose(bank.rows(torch.tensor([0]))[1][0], t["y_tilde"][0], rtol=1e-6)


def test_state_dict_round_trip_and_half_precision():
    bank = LocalBank(LABELS, C, dtype=torch.float16)
    bank.put(
        torch.tensor([2]), y_hat=rows(1, 4), y_tilde=rows(1, 5), alpha=torch.tensor([0.3]), beta=torch.tensor([0.6])
    )
    assert bank.y_tilde.dtype == torch.float16
    other = LocalBank(LABELS, C, dtype=torch.float16)
    other.load_state_dict(bank.state_dict())
    for k, v in bank.table().items():
        np.testing.assert_array_equal(v, other.table()[k])
    with pytest.raises(ValueError, match="refresh"):
        LocalBank(LABELS, C, refresh="step").load_state_dict(bank.state_dict())
    with pytest.raises(IndexError):
        bank.rows(torch.tensor([N]))
