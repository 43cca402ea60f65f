"""The zoo follows its sources: layer lists, biases, activations, init, sizes.

Each expected list is a transcription of the official code's layer list
(read, not copied), in the form
("conv", in, out, kernel, stride, padding, bias) / ("fc", in, out, bias) /
(activation name, parameter) / ("flatten",).
"""
import math

import pytest
import torch
from torch import nn

from leakbook import models


def layer_list(net: nn.Module) -> list[tuple]:
    """Our model as the same kind of tuples as the transcriptions below."""
    out = []
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            out.append(("conv", m.in_channels, m.out_channels, m.kernel_size[0],
                        m.stride[0], m.padding[0], m.bias is not None))
        elif isinstance(m, nn.Linear):
            out.append(("fc", m.in_features, m.out_features, m.bias is not None))
        elif isinstance(m, nn.LeakyReLU):
            out.append(("leaky_relu", m.negative_slope))
        elif isinstance(m, (nn.Sigmoid, nn.Tanh)):
            out.append((type(m).__name__.lower(), None))
        elif isinstance(m, nn.Flatten):
            out.append(("flatten",))
    return out


# JunyiZhu-AI/R-GAP @ b842eca0e85029784a793639acd6a4047e738af1, models/CNN6.py:
# six bias-free convs, each followed by LeakyReLU(0.2), Linear(3200, 1, no bias)
# followed by Identity; default PyTorch init (main.py seeds and builds it).
LRELU = ("leaky_relu", 0.2)
CNN6 = [("conv", 3, 12, 4, 2, 2, False), LRELU, ("conv", 12, 36, 3, 2, 1, False),
        LRELU, ("conv", 36, 36, 3, 1, 1, False), LRELU,
        ("conv", 36, 36, 3, 1, 1, False), LRELU, ("conv", 36, 64, 3, 2, 1, False),
        LRELU, ("conv", 64, 128, 3, 1, 1, False), LRELU, ("flatten",),
        ("fc", 3200, 1, False)]
# same repository and commit, models/CNN6d.py: the 2nd conv 12->20, the 3rd 20->36
CNN6_D = [*CNN6[:2], ("conv", 12, 20, 3, 2, 1, False), LRELU,
          ("conv", 20, 36, 3, 1, 1, False), LRELU, *CNN6[6:]]
# same repository and commit, models/FCN3.py: three bias-free Linear layers,
# each followed by LeakyReLU(0.2), the last one too
FCN3 = [("flatten",), ("fc", 784, 1000, False), LRELU, ("fc", 1000, 100, False), LRELU,
        ("fc", 100, 1, False), LRELU]
# mit-han-lab/dlg @ d21007fa1540ba2303ebc034976aa331814727c7, models/vision.py:
# LeNet, three convs k5 (padding 5//2, strides 2, 2, 1) with bias, Sigmoid after
# each, Linear(768, 100) with bias; weights_init draws every weight and bias
# U(-0.5, 0.5)
LENET = [("conv", 3, 12, 5, 2, 2, True), ("sigmoid", None),
         ("conv", 12, 12, 5, 2, 2, True), ("sigmoid", None),
         ("conv", 12, 12, 5, 1, 2, True), ("sigmoid", None),
         ("flatten",), ("fc", 768, 100, True)]
# CangxiongChen/training-data-leakage @ beb50470f2a88252fc834be7fd2e495110a51b7a,
# targets.py: CustomConv2d defaults to bias=False, CustomLinear keeps its bias;
# activation_list is Tanh after each conv and Identity after the Linear;
# default PyTorch init (hybrid.py seeds and builds the model).
TANH = ("tanh", None)
CNN2_C1 = [("conv", 3, 6, 3, 1, 0, False), TANH, ("flatten",), ("fc", 5400, 10, True)]
CNN3_C1 = [("conv", 3, 6, 3, 1, 0, False), TANH, ("conv", 6, 3, 4, 2, 0, False), TANH,
           ("flatten",), ("fc", 588, 10, True)]
CNN4_C2 = [("conv", 3, 16, 5, 1, 0, False), TANH, ("conv", 16, 6, 5, 2, 0, False), TANH,
           ("conv", 6, 32, 5, 1, 2, False), TANH, ("flatten",), ("fc", 4608, 10, True)]

SOURCES = {  # name: (build kwargs, input shape, output size, transcription)
    "cnn6": ({}, (3, 32, 32), 1, CNN6),
    "cnn6_d": ({}, (3, 32, 32), 1, CNN6_D),
    "fcn3": ({}, (1, 28, 28), 1, FCN3),
    "lenet_dlg": ({"num_classes": 100}, (3, 32, 32), 100, LENET),
    "cnn2_c1": ({}, (3, 32, 32), 10, CNN2_C1),
    "cnn3_c1": ({}, (3, 32, 32), 10, CNN3_C1),
    "cnn4_c2": ({}, (3, 32, 32), 10, CNN4_C2),
}


def _default_init_bound(p: torch.Tensor) -> float:
    """PyTorch's default init bound for a weight: 1/sqrt(fan_in) (kaiming a=sqrt 5)."""
    return 1 / math.sqrt(p[0].numel())


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_model_matches_its_source(name):
    kwargs, shape, out_size, expected = SOURCES[name]
    net = models.build(name, **kwargs)
    assert layer_list(net) == expected
    out = net(torch.rand(2, *shape))
    assert tuple(out.shape) == (2, out_size)


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_model_initialisation_follows_its_source(name):
    kwargs = SOURCES[name][0]
    params = list(models.build(name, **kwargs).parameters())
    weights = [p for p in params if p.dim() > 1]
    if name == "lenet_dlg":   # DLG's weights_init: every tensor U(-0.5, 0.5)
        for p in params:
            assert p.abs().max() <= 0.5
        assert all(w.abs().max() > 0.49 for w in weights)
        return
    for w in weights:         # PyTorch's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        bound = _default_init_bound(w)
        assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound


def test_zero_size_layers_are_refused():
    with pytest.raises(ValueError, match="widths"):
        models.build("mlp", widths=(10, 0))
    with pytest.raises(ValueError, match="num_classes"):
        models.build("cnn4_c2", num_classes=0)
    with pytest.raises(ValueError, match="image_size"):
        models.build("cnn6", image_size=-4)
    with pytest.raises(TypeError, match="widths"):
        models.build("mlp", widths=5)
