"""No host synchronisation per step: the training loop reads floating-point tensors on the
host (``.item()``, ``float(t)``, ``bool(t)``, ``.tolist()``, ``.cpu()``, ``.numpy()``) a
fixed number of times per epoch, the same at 8 steps as at 16. On a GPU each such read
waits for the device; the loop reads its sums once per log interval and at the epoch's end."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from torch.overrides import TorchFunctionMode

from pipeline.training.methods import registry as methods
from pipeline.training.methods.state import build_data, build_state
from pipeline.training.run.epoch import train_epoch
from tests.helpers import smoke_cfg

READS = {
    torch.Tensor.item,
    torch.Tensor.tolist,
    torch.Tensor.__float__,
    torch.Tensor.__bool__,
    torch.Tensor.cpu,
    torch.Tensor.numpy,
}


class HostReads(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in READS and isinstance(args[0], torch.Tensor) and args[0].is_floating_point():
            caller = sys._getframe(1).f_code.co_filename
            # Adam keeps its step count on the host unless capturable: reading it waits for nothing
            if f"torch{os.sep}optim{os.sep}" not in caller:
                self.count += 1
        return func(*args, **(kwargs or {}))


def reads_in_an_epoch(fake_data_cfg, tmp_path, method: str, batch: int, extra: tuple = ()) -> tuple[int, int]:
    cfg = smoke_cfg(
        fake_data_cfg,
        tmp_path,
        f"{method}{batch}",
        2,
        (f"meta.method={method}", f"optim.batch_size={batch}", "run.log_every_s=0", *extra),
    )
    device = torch.device("cpu")
    data = build_data(cfg, device)
    st = build_state(cfg, data, device)
    st.method = methods.build_method(cfg, device)
    with HostReads() as mode:
        stats = train_epoch(cfg, st, data, 2, device, tmp_path)  # epoch 2: past the warm-up
    return mode.count, stats["steps"]


# the user-facing corrector's additions: the estimated transition, trusted samples, the blend
RECOMMENDED = (
    "mslc.transition=estimated",
    "mslc.trusted_passes=2",
    "mslc.posterior_mix=0.75",
    "mslc.alpha_prior=prediction",
)


@pytest.mark.parametrize("method, extra", [("mslc", ()), ("mslc", RECOMMENDED), ("mwnet", ())])
def test_host_reads_per_epoch_do_not_grow_with_its_steps(fake_shards, fake_data_cfg, tmp_path, method, extra):
    few, steps_few = reads_in_an_epoch(fake_data_cfg, tmp_path, method, 64, extra)
    many, steps_many = reads_in_an_epoch(fake_data_cfg, tmp_path, method, 32, extra)
    assert steps_many > steps_few
    assert many == few, f"{many - few} host reads more for {steps_many - steps_few} more steps"
