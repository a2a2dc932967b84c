import pytest
import torch

from mslc.models import build_model


@pytest.mark.parametrize(
    "arch,shape,stem",
    [
        ("small-cnn", (2, 1, 28, 28), "cifar"),
        ("resnet18", (2, 3, 32, 32), "cifar"),
        ("resnet34", (2, 3, 32, 32), "cifar"),
    ],
)
def test_forward_shapes(arch, shape, stem):
    model = build_model(arch, num_classes=7, in_channels=shape[1], stem=stem)
    assert model(torch.randn(shape)).shape == (2, 7)


def test_resnet50_uses_torchvision_names_so_imagenet_weights_load():
    torchvision = pytest.importorskip("torchvision")
    ours = build_model("resnet50", num_classes=14, in_channels=3, stem="imagenet")
    ref = torchvision.models.resnet50(weights=None)
    sd = {k: v for k, v in ref.state_dict().items() if not k.startswith("fc.")}
    missing, unexpected = ours.load_state_dict(sd, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and unexpected == []
    assert ours(torch.randn(1, 3, 64, 64)).shape == (1, 14)


def test_unknown_arch():
    with pytest.raises(ValueError, match="unknown model arch 'vgg'"):
        build_model("vgg", num_classes=10, in_channels=3)


@pytest.mark.parametrize("side", [7, 16])
def test_small_cnn_pooling_equals_adaptive_average_pooling(side):
    """PoolTo(7) is nn.AdaptiveAvgPool2d(7) to the bit, forward and backward: skipped on a
    7×7 input (the small CNN's at 28×28 images), pooled on any other."""
    from torch import nn

    from mslc.models import PoolTo

    x = torch.randn(3, 4, side, side, requires_grad=True)
    ref = x.detach().clone().requires_grad_()
    out, want = PoolTo(7)(x), nn.AdaptiveAvgPool2d(7)(ref)
    assert out.shape == (3, 4, 7, 7) and torch.equal(out, want)
    g = torch.randn_like(out)
    out.backward(g)
    want.backward(g)
    assert torch.equal(x.grad, ref.grad)
