"""The conv-as-matrix primitives agree with torch's convolution and autograd."""
import pytest
import torch
from torch import nn

from leakbook.attacks import linear_systems as ls

CASES = [  # (C, O, k, s, p, H)
    (3, 12, 4, 2, 2, 16), (12, 36, 3, 2, 1, 9), (3, 16, 5, 1, 0, 12), (16, 6, 5, 2, 0, 12),
    (2, 4, 3, 1, 1, 7),
]


@pytest.mark.parametrize("c,o,k,s,p,h", CASES)
def test_conv_matrix_equals_conv2d(c, o, k, s, p, h):
    torch.manual_seed(0)
    conv = nn.Conv2d(c, o, k, s, p).double()
    x = torch.randn(1, c, h, h, dtype=torch.float64)
    a = ls.conv_matrix(conv, (c, h, h))
    z = conv(x) - conv.bias[None, :, None, None]
    assert a.shape == (z.numel(), x.numel())
    assert torch.allclose(a @ x.flatten(), z.flatten(), atol=1e-12)
    assert torch.allclose(ls.conv_matrix(conv, (c, h, h), sparse=True).to_dense(), a)
    assert ls.output_shape(conv, (c, h, h)) == tuple(z.shape[1:])


@pytest.mark.parametrize("c,o,k,s,p,h", CASES)
def test_gradient_matrix_equals_autograd(c, o, k, s, p, h):
    torch.manual_seed(1)
    conv = nn.Conv2d(c, o, k, s, p).double()
    x = torch.randn(1, c, h, h, dtype=torch.float64)
    z = conv(x)
    delta = torch.randn_like(z)
    (gw,) = torch.autograd.grad((z * delta).sum(), [conv.weight])
    kmat = ls.conv_gradient_matrix(conv, (c, h, h), delta)
    assert torch.allclose(kmat @ x.flatten(), gw.flatten(), atol=1e-12)


def test_unread_pixels_of_a_stride_that_skips_the_border():
    conv = nn.Conv2d(1, 1, 5, 2, 0)
    mask = ls.unread_pixels(conv, (1, 28, 28))
    assert mask[0, -1].all() and mask[0, :, -1].all() and mask.sum() == 28 + 27
    assert not ls.unread_pixels(nn.Conv2d(1, 1, 3, 1, 1), (1, 8, 8)).any()


def test_bad_input():
    with pytest.raises(TypeError, match="Conv2d"):
        ls.conv_matrix(nn.Linear(3, 3), (3, 4, 4))
    with pytest.raises(ValueError, match="input_shape"):
        ls.conv_matrix(nn.Conv2d(3, 4, 3), (2, 8, 8))
    with pytest.raises(ValueError, match="delta must"):
        ls.conv_gradient_matrix(nn.Conv2d(1, 2, 3), (1, 5, 5), torch.zeros(5))
