"""The model zoo of the gradient-inversion literature, built seeded.

Taught in chapter 01 (and chapters 04-08 use the zoo). ``build(name, ...)``
returns a fresh ``torch.nn.Module``; the same seed gives the same weights and
the global random state is left untouched.

lenet_dlg    DLG: conv(12,k5,s2,p2), conv(12,k5,s2,p2), conv(12,k5,s1,p2),
             FC; sigmoid; weights and biases ~ U(-0.5, 0.5)
cnn6         R-GAP: six bias-free convs 12-36-36-36-64-128, LeakyReLU(0.2),
             bias-free FC to one logit
cnn6_d       R-GAP: as cnn6 with the 2nd and 3rd conv 12->20->36
             (rank-deficient)
fcn3         R-GAP: FC 784-1000-100-1, each followed by LeakyReLU(0.2) (the
             output too), bias-free
mlp          FC layers of chosen widths
cnn2_c1      Chen & Campbell: conv(6,k3), FC; tanh; bias-free conv, FC bias
cnn3_c1      Chen & Campbell: conv(6,k3), conv(3,k4,s2), FC; tanh; as cnn2_c1
cnn4_c2      Chen & Campbell: conv(16,k5), conv(6,k5,s2), conv(32,k5,p2), FC;
             tanh; bias-free convs, FC bias
resnet_tiny  conv stem, two residual blocks (optional BatchNorm), FC

Each literature model follows its source's layer list, biases and
initialisation (``tests/test_models.py`` checks them against transcriptions
of the official code). Only the number of classes and the image size are
arguments: DLG's code has 100 classes (CIFAR-100), ours defaults to 10.
"""
from __future__ import annotations

import torch
from torch import nn

from . import checks

ACTIVATIONS = {
    "sigmoid": nn.Sigmoid,
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.2),
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "silu": nn.SiLU,
    "identity": nn.Identity,
}


def make_activation(name: str) -> nn.Module:
    """A fresh activation module by name (see ``ACTIVATIONS``).

    A name outside ``ACTIVATIONS`` is refused as "activation must be one of ...".
    """
    checks.choice(name, "activation", sorted(ACTIVATIONS))
    return ACTIVATIONS[name]()


def _positive(**sizes) -> None:
    """Every size a positive int, every ``widths`` entry too (a zero-size layer is
    no layer); widths may be empty."""
    for key, value in sizes.items():
        if key == "widths":
            if not isinstance(value, (list, tuple)):
                checks.fail("widths", "a list or tuple of positive ints", value,
                            TypeError)
            for i, v in enumerate(value):
                checks.integer(v, f"widths[{i}]", minimum=1)
        else:
            checks.integer(value, key, minimum=1)


def _conv_out(size: int, k: int, s: int, p: int) -> int:
    return (size + 2 * p - k) // s + 1


def _conv_stack(spec, in_channels: int, image_size: int, act: str, bias: bool,
                batchnorm: bool = False):
    """Convs from a spec [(out, k, s, p), ...], each followed by the activation
    (with batchnorm, by BatchNorm2d and then the activation)."""
    _positive(in_channels=in_channels, image_size=image_size,
              widths=[out for out, *_ in spec])
    checks.flag(bias, "bias")
    checks.flag(batchnorm, "batchnorm")
    layers, c, size = [], in_channels, image_size
    for out, k, s, p in spec:
        norm = [nn.BatchNorm2d(out)] if batchnorm else []
        layers += [nn.Conv2d(c, out, k, s, p, bias=bias), *norm, make_activation(act)]
        c, size = out, _conv_out(size, k, s, p)
        if size < 1:
            raise ValueError(f"image_size {image_size} is too small for this network")
    return layers, c * size * size


def _cnn(spec, in_channels, image_size, num_classes, act, bias, head_bias=None,
         batchnorm=False):
    _positive(num_classes=num_classes)
    if head_bias is not None:
        checks.flag(head_bias, "head_bias")
    layers, features = _conv_stack(spec, in_channels, image_size, act, bias, batchnorm)
    head_bias = bias if head_bias is None else head_bias
    return nn.Sequential(*layers, nn.Flatten(),
                         nn.Linear(features, num_classes, bias=head_bias))


def lenet_dlg(in_channels=3, image_size=32, num_classes=10, activation="sigmoid"):
    """DLG's LeNet; init U(-0.5, 0.5) as in the DLG code."""
    spec = [(12, 5, 2, 2), (12, 5, 2, 2), (12, 5, 1, 2)]
    net = _cnn(spec, in_channels, image_size, num_classes, activation, True)
    for p in net.parameters():
        nn.init.uniform_(p, -0.5, 0.5)
    return net


def cnn6(in_channels=3, image_size=32, num_classes=1, activation="leaky_relu",
         bias=False, head_bias=None, widths=(12, 36, 36, 36, 64, 128),
         batchnorm=False):
    """R-GAP's CNN6: bias-free by default, one logit for the logistic loss.
    batchnorm=True puts a BatchNorm2d after every conv (chapter 05's BN CNN)."""
    k = [(4, 2, 2), (3, 2, 1), (3, 1, 1), (3, 1, 1), (3, 2, 1), (3, 1, 1)]
    spec = [(w, *ks) for w, ks in zip(widths, k)]
    return _cnn(spec, in_channels, image_size, num_classes, activation, bias, head_bias,
                batchnorm)


def cnn6_d(**kwargs):
    """R-GAP's CNN6-d: the 2nd and 3rd convs are 20 and 36 wide (rank-deficient)."""
    return cnn6(widths=(12, 20, 36, 36, 64, 128), **kwargs)


def mlp(in_features=64, widths=(100,), num_classes=10, activation="relu", bias=True):
    """Flatten, then FC layers of the given widths, each followed by the activation."""
    _positive(in_features=in_features, widths=widths, num_classes=num_classes)
    checks.flag(bias, "bias")
    layers, prev = [nn.Flatten()], in_features
    for w in widths:
        layers += [nn.Linear(prev, w, bias=bias), make_activation(activation)]
        prev = w
    layers.append(nn.Linear(prev, num_classes, bias=bias))
    return nn.Sequential(*layers)


def fcn3(in_features=784, num_classes=1, activation="leaky_relu", bias=False):
    """R-GAP's FCN3: 784-1000-100-1, bias-free, LeakyReLU after every layer.

    As in R-GAP's code the output passes through the activation too (the
    logistic loss then reads LeakyReLU(f)).
    """
    net = mlp(in_features, (1000, 100), num_classes, activation, bias)
    net.append(make_activation(activation))
    return net


def cnn2_c1(in_channels=3, image_size=32, num_classes=10, activation="tanh"):
    """Chen & Campbell's cnn2_c1: bias-free conv(6, k3), then FC with bias."""
    return _cnn([(6, 3, 1, 0)], in_channels, image_size, num_classes, activation,
                False, head_bias=True)


def cnn3_c1(in_channels=3, image_size=32, num_classes=10, activation="tanh"):
    """Chen & Campbell's cnn3_c1: bias-free conv(6, k3), conv(3, k4, s2); FC
    with bias."""
    return _cnn([(6, 3, 1, 0), (3, 4, 2, 0)], in_channels, image_size, num_classes,
                activation, False, head_bias=True)


def cnn4_c2(in_channels=3, image_size=32, num_classes=10, activation="tanh"):
    """Chen & Campbell's cnn4_c2: bias-free conv(16, k5), conv(6, k5, s2),
    conv(32, k5, p2); FC with bias."""
    spec = [(16, 5, 1, 0), (6, 5, 2, 0), (32, 5, 1, 2)]
    return _cnn(spec, in_channels, image_size, num_classes, activation, False,
                head_bias=True)


class _Block(nn.Module):
    def __init__(self, c: int, act: str, batchnorm: bool):
        super().__init__()
        norm = (lambda: nn.BatchNorm2d(c)) if batchnorm else nn.Identity
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1), norm(),
                                  make_activation(act),
                                  nn.Conv2d(c, c, 3, 1, 1), norm())
        self.act = make_activation(act)

    def forward(self, x):
        return self.act(x + self.body(x))


def resnet_tiny(in_channels=3, image_size=32, num_classes=10, width=16,
                activation="relu", batchnorm=True):
    """A conv stem (stride 2), two residual blocks, global average pooling, FC."""
    _positive(in_channels=in_channels, image_size=image_size, num_classes=num_classes,
              width=width)
    checks.flag(batchnorm, "batchnorm")
    norm = nn.BatchNorm2d(width) if batchnorm else nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, 2, 1), norm, make_activation(activation),
        _Block(width, activation, batchnorm), _Block(width, activation, batchnorm),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))


ZOO = {f.__name__: f for f in (lenet_dlg, cnn6, cnn6_d, fcn3, mlp, cnn2_c1, cnn3_c1,
                                cnn4_c2, resnet_tiny)}


_SIZES = ("in_channels", "image_size", "num_classes", "in_features", "width")


def _check_sizes(name: str, kwargs: dict) -> None:
    """Every size argument a positive int (a zero-size layer is no layer)."""
    _positive(**{key: kwargs[key] for key in _SIZES + ("widths",) if key in kwargs})


def build(name: str, seed: int = 0, dtype: torch.dtype = torch.float32,
          **kwargs) -> nn.Module:
    """Build a zoo model with weights drawn from ``seed``.

    The global torch random state is not changed. Keyword arguments go to the
    builder (for example ``activation="relu"``, ``num_classes=10``,
    ``image_size=16``). The model comes back in train mode, as a client uses
    it; ``dtype=torch.float64`` for the exactness demos.
    """
    checks.choice(name, "name", sorted(ZOO))
    seed = checks.seed(seed)
    dtype = checks.float_dtype(dtype)
    _check_sizes(name, kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            net = ZOO[name](**kwargs)
        except TypeError as err:
            raise TypeError(f"build({name!r}): {err}") from None
    return net.to(dtype)
