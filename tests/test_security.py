"""The security audit agrees with hand-derived counts and ranks (chapter 08)."""
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from leakbook import models, security
from leakbook.attacks import linear_systems as ls

ROOT = Path(__file__).resolve().parents[1]



def _dense_rank(conv, shape, seed=0):
    """Rank of [K; A] by a dense SVD, as an independent check."""
    g = torch.Generator().manual_seed(seed)
    conv = conv.double()
    delta = torch.randn(ls.output_shape(conv, shape), generator=g, dtype=torch.float64)
    k = ls.conv_gradient_matrix(conv, shape, delta)
    a = ls.conv_matrix(conv, shape)
    stack = torch.cat([k / k.norm(), a / a.norm()])
    return int(torch.linalg.matrix_rank(stack, rtol=1e-9))


def test_single_fc_layer_counts_and_rank():
    # Linear 5 -> 3: 5 unknowns, 15 gradient rows (delta x^T), 3 forward rows.
    # K = delta (x) I_5 has rank 5, so the system determines x: deficiency 0.
    net = nn.Sequential(nn.Linear(5, 3))
    r = security.audit(net, (5,)).layers[0]
    assert (r.unknowns, r.gradient_constraints, r.forward_constraints) == (5, 15, 3)
    assert r.virtual_constraints == 0 and r.count_index == 5 - 15 - 3
    assert r.rank == 5 and r.deficiency == 0 and r.filters == 3
    delta = torch.randn(3, 1, dtype=torch.float64)
    w = torch.randn(3, 5, dtype=torch.float64)
    stack = torch.cat([torch.kron(delta, torch.eye(5, dtype=torch.float64)), w])
    assert int(torch.linalg.matrix_rank(stack)) == 5


def test_single_conv_layer_identity_b():
    # Conv 1->1, k2, s2 on 4x4: four disjoint 2x2 patches, X (4 positions x 4 taps).
    # Gradient rows: delta^T X (4), forward rows: X w (4), and delta^T X w is
    # counted twice (identity B): rank 4 + 4 - 1 = 7, deficiency 16 - 7 = 9.
    conv = nn.Conv2d(1, 1, 2, 2, bias=False)
    r = security.audit(nn.Sequential(conv), (1, 4, 4)).layers[0]
    assert (r.unknowns, r.gradient_constraints, r.forward_constraints) == (16, 4, 4)
    assert r.count_index == 8
    assert r.rank == 7 and r.deficiency == 9 and r.rank_bound == 7
    assert _dense_rank(nn.Conv2d(1, 1, 2, 2, bias=False), (1, 4, 4)) == 7
    # Two filters: 8 + 8 rows, O * min(O, L) = 4 shared directions -> rank 12.
    r2 = security.audit(nn.Sequential(nn.Conv2d(1, 2, 2, 2)), (1, 4, 4)).layers[0]
    assert r2.rank == 12 and r2.rank_bound == 12


@pytest.mark.parametrize("c,o,k,s,p,h", [(3, 12, 4, 2, 2, 8), (12, 20, 3, 2, 1, 9),
                                         (4, 6, 3, 2, 1, 9), (6, 3, 4, 2, 0, 10),
                                         (8, 6, 5, 2, 0, 11), (2, 3, 3, 1, 1, 6)])
def test_gram_rank_matches_dense_svd_and_prediction(c, o, k, s, p, h):
    torch.manual_seed(0)
    conv = nn.Conv2d(c, o, k, s, p)
    r = security.audit(nn.Sequential(conv), (c, h, h), weights="model").layers[0]
    assert r.rank == _dense_rank(conv, (c, h, h))
    assert r.rank == r.rank_bound
    assert r.gap[0] > 1e3 * max(r.gap[1], 1e-12)


def test_virtual_constraints_and_copa_index():
    net = nn.Sequential(nn.Linear(4, 10), nn.Tanh(), nn.Linear(10, 3))
    rows = security.audit(net, (4,)).layers
    assert [r.virtual_constraints for r in rows] == [0, 6]
    # conv (deficiency 9, weight 1) then FC (weight 0): COPA index -9
    net = nn.Sequential(nn.Conv2d(1, 1, 2, 2), nn.LeakyReLU(0.2), nn.Flatten(),
                        nn.Linear(4, 1))
    a = security.audit(net, (1, 4, 4))
    assert [r.copa_weight for r in a.layers] == [1.0, 0.0]
    assert a.copa_index == -9 and a.ra_index == 8
    assert "COPA index = -9" in str(a) and a.to_markdown().startswith("| #")


def test_nested_sequential_and_zoo_model():
    a = security.audit(models.build("cnn3_c1", image_size=12), (3, 12, 12))
    assert [r.kind.split()[0] for r in a.layers] == ["Conv", "Conv", "Linear"]
    nested = nn.Sequential(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh()), nn.Flatten(),
                           nn.Sequential(nn.Linear(2 * 4 * 4, 3)))
    assert len(security.audit(nested, (1, 6, 6)).layers) == 2


@pytest.mark.parametrize("bad", [nn.MaxPool2d(2), nn.BatchNorm2d(4)])
def test_unsupported_layer_is_named(bad):
    net = nn.Sequential(nn.Conv2d(1, 4, 3), bad, nn.Flatten(), nn.Linear(4, 1))
    with pytest.raises(ValueError, match=rf"layer '1' \({type(bad).__name__}\)"):
        security.audit(net, (1, 6, 6))


def test_bad_inputs():
    with pytest.raises(TypeError, match="nn.Sequential"):
        security.audit(nn.Conv2d(1, 1, 1), (1, 4, 4))
    with pytest.raises(ValueError, match=r"layer '3' \(_Block\)"):
        security.audit(models.build("resnet_tiny", batchnorm=False), (3, 32, 32))
    with pytest.raises(ValueError, match="Flatten"):
        security.audit(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Linear(4, 1)), (1, 4, 4))
    with pytest.raises(ValueError, match="input_shape"):
        security.audit(nn.Sequential(nn.Linear(4, 1)), (2, 2))


def test_blind_spot_hand_checked():
    # k2 s2 without padding on 5x5 never reads the last row and column
    conv = nn.Conv2d(1, 1, 2, 2)
    expected = torch.zeros(1, 5, 5, dtype=torch.bool)
    expected[0, 4, :] = True
    expected[0, :, 4] = True
    assert torch.equal(security.blind_spot(nn.Sequential(conv), (1, 5, 5)), expected)
    # the blind spot propagates down: a 1x1 conv reads everything, but the
    # stride-2 layer above it never reads its last row and column
    net = nn.Sequential(nn.Conv2d(1, 3, 1), nn.Tanh(), nn.Conv2d(3, 2, 2, 2),
                        nn.Flatten(), nn.Linear(8, 1))
    blind = security.blind_spot(net, (1, 5, 5))
    assert torch.equal(blind, expected)
    assert security.audit(net, (1, 5, 5)).blind_pixels == 9
    # and no gradient changes when a blind pixel changes
    x = torch.rand(1, 1, 5, 5)
    x2 = x.clone()
    x2[0, 0, 4, 2] += 1.0
    g1 = torch.autograd.grad(net(x).sum(), list(net.parameters()))
    g2 = torch.autograd.grad(net(x2).sum(), list(net.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))
    # PSNR cap: x = 1 on the 9 blind pixels, 0 elsewhere; mean fill = 0
    img = expected.to(torch.float64)
    assert security.psnr_cap(img, expected) == pytest.approx(10 * math.log10(25 / 9))
    assert security.psnr_cap(img, torch.zeros_like(expected)) == math.inf
    # cnn4_c2 at 32x32: the last row and column of each channel
    blind = security.blind_spot(models.build("cnn4_c2"), (3, 32, 32))
    assert int(blind.sum()) == 3 * 63
    assert bool(blind[:, 31].all() and blind[:, :, 31].all())


def _cli(*args, env_extra=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *(env_extra or [])]))
    return subprocess.run([sys.executable, "-m", "leakbook", *args],
                          capture_output=True, text=True, env=env, timeout=120)


def test_cli_module_callable_in_a_subprocess(tmp_path):
    (tmp_path / "mynet.py").write_text(
        "from torch import nn\n"
        "def tiny():\n"
        "    return nn.Sequential(nn.Conv2d(1, 1, 2, 2), nn.Flatten(),\n"
        "                         nn.Linear(4, 1))\n")
    out = _cli("audit", "mynet:tiny", "--input-shape", "1", "4", "4", "--markdown",
               env_extra=[str(tmp_path)])
    assert out.returncode == 0, out.stderr
    assert "COPA index = -9" in out.stdout and out.stdout.startswith("| #")


def test_cli_zoo_name_and_errors(capsys, tmp_path, monkeypatch):
    from leakbook.__main__ import main
    assert main(["audit", "cnn3_c1", "--input-shape", "3", "12", "12"]) == 0
    out = capsys.readouterr().out
    assert "Conv 6->3 k4 s2 p0, input 6x10x10" in out
    assert max(len(line) for line in out.splitlines()) <= 80
    (tmp_path / "pooled_net.py").write_text(
        "from torch import nn\n"
        "def pooled():\n"
        "    return nn.Sequential(nn.Conv2d(1, 1, 2), nn.MaxPool2d(2))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["audit", "pooled_net:pooled", "--input-shape", "1", "4", "4"]) == 2
    assert "layer '1' (MaxPool2d)" in capsys.readouterr().err
    assert main(["audit", "no_such_model", "--input-shape", "3", "8", "8"]) == 2
    assert "neither module:callable nor a zoo model" in capsys.readouterr().err


def test_text_form_fits_80_columns():
    for name, shape in (("cnn4_c2", (3, 16, 16)), ("cnn6", (3, 16, 16))):
        text = str(security.audit(models.build(name, image_size=16), shape))
        assert max(len(line) for line in text.splitlines()) <= 80
        assert "COPA index" in text and "layers:" in text


def test_resources_are_estimated_before_the_work():
    est = security.estimate_cost(models.build("cnn6", image_size=64), (3, 64, 64))
    assert est["bytes"] > 2 * 2**30 and est["seconds"] > 60
    with pytest.raises(MemoryError, match=r"GB .*max_memory_gb=2"):
        security.audit(models.build("cnn6", image_size=64), (3, 64, 64))
    small = models.build("cnn3_c1", image_size=12)
    with pytest.warns(UserWarning, match="will take"):
        security.audit(small, (3, 12, 12), warn_seconds=0.0)


def test_progress_goes_to_stderr(capsys):
    security.audit(models.build("cnn3_c1", image_size=12), (3, 12, 12), progress=True)
    err = capsys.readouterr().err
    assert "audit: layer 1/3" in err and "audit: layer 3/3" in err


@pytest.fixture
def bad_modules(tmp_path, monkeypatch):
    (tmp_path / "broken_syntax.py").write_text("def make(:\n    pass\n")
    (tmp_path / "raising_factory.py").write_text(
        "def make():\n    raise RuntimeError('no weights here')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("args,message", [
    (["cnn6", "--input-shape", "-3", "8", "8"], "--input-shape[0] must be a positive"),
    (["broken_syntax:make", "--input-shape", "3", "8", "8"], "syntax error"),
    (["raising_factory:make", "--input-shape", "3", "8", "8"],
     "raised RuntimeError: no weights here"),
    (["cnn6", "--input-shape", "3", "4096", "4096"], "entries"),
    (["cnn6", "--input-shape", "3", "64", "64"], "max_memory_gb"),
    (["cnn6", "--input-shape", "3", "8"], "C H W"),
])
def test_cli_errors_are_one_line(bad_modules, capsys, args, message):
    from leakbook.__main__ import main
    threads = torch.get_num_threads()
    assert main(["audit", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert torch.get_num_threads() == threads


def test_cli_debug_shows_the_traceback_and_threads_are_restored(bad_modules, capsys):
    from leakbook.__main__ import main
    torch.set_num_threads(2)
    try:
        assert main(["audit", "raising_factory:make", "--input-shape", "3", "8", "8",
                     "--debug"]) == 2
        assert "Traceback" in capsys.readouterr().err
        assert torch.get_num_threads() == 2
        assert main(["audit", "cnn3_c1", "--input-shape", "3", "12", "12"]) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)


def test_cli_error_in_a_subprocess_exits_non_zero():
    out = _cli("audit", "cnn6", "--input-shape", "-3", "8", "8")
    assert out.returncode == 2 and out.stderr.startswith("error: ")
    assert "Traceback" not in out.stderr
