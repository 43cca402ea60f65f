"""No hidden mutation: every public entry point leaves its inputs as it found them.

The framework (issue 14, item 2): ``snapshot`` records, bit for bit, every
tensor, model and list reachable from a call's arguments: a model's
parameters and buffers (values, dtype, shape, version counter), the training
flag of each submodule, each parameter's requires_grad flag and .grad, and
the items of every list (so an appended, removed or replaced tensor shows).
It also records the process-wide state a library function must not touch:
torch's, NumPy's and Python's random generators, torch's thread count, default
dtype and grad mode, and matplotlib's rcParams. ``check_call`` snapshots,
calls, snapshots again and lists every difference; it also fails if a
returned tensor shares memory with an input (a caller editing the result in
place would change its model or data).

The table ``CASES`` holds one row per public entry point: a name and a
function that builds a fresh call ``(fn, args, kwargs)``. Phase 2 adds the
attacks, ``security``, ``defenses`` and ``models`` (see tests/ROBUSTNESS.md).
Rows whose purpose is global state (``seed_everything``, ``book_style``) skip
that part of the check: ``Case(..., global_state=False)``.
"""
from __future__ import annotations

import dataclasses
import random
from typing import Callable, NamedTuple

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import leakbook as lb  # noqa: E402
from leakbook import checks, data, fl, isolation, metrics, models, viz  # noqa: E402
from leakbook.attacks import analytic, tensor  # noqa: E402
from leakbook import __main__ as cli, security  # noqa: E402
from leakbook.attacks import (hybrid, layers, linear_systems,  # noqa: E402
                              recursive)

F64 = torch.float64


# --- the framework --------------------------------------------------------------

def _bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes (NaN-safe, dtype-agnostic), detached and copied."""
    t = t.detach()
    if t.numel() == 0:
        return torch.zeros(0, dtype=torch.uint8)
    return t.contiguous().reshape(-1).view(torch.uint8).clone()


def _tensor_record(t: torch.Tensor) -> tuple:
    return (t.dtype, tuple(t.shape), t.device, t.requires_grad, t._version, _bits(t))


def _module_record(m: torch.nn.Module) -> dict:
    params = dict(m.named_parameters(remove_duplicate=False))
    return {
        "parameters": {k: (id(p), _tensor_record(p)) for k, p in params.items()},
        "buffers": {k: (id(b), _tensor_record(b))
                    for k, b in m.named_buffers(remove_duplicate=False)},
        "training": {k: sub.training for k, sub in m.named_modules()},
        "grads": {k: None if p.grad is None else _tensor_record(p.grad)
                  for k, p in params.items()},
        "modules": {k: id(sub) for k, sub in m.named_modules()},
    }


def snapshot(obj):
    """A bitwise record of obj and of every tensor, module and list inside it."""
    if isinstance(obj, torch.nn.Module):
        return ("module", _module_record(obj))
    if isinstance(obj, torch.Tensor):
        return ("tensor", _tensor_record(obj))
    if isinstance(obj, np.ndarray):
        return ("array", obj.dtype, obj.shape, obj.tobytes())
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__, [id(v) for v in obj], [snapshot(v) for v in obj])
    if isinstance(obj, dict):
        return ("dict", {k: (id(v), snapshot(v)) for k, v in obj.items()})
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return ("dataclass", {f.name: snapshot(getattr(obj, f.name))
                              for f in dataclasses.fields(obj)})
    return ("other", id(obj))


def global_state() -> dict:
    """Process-wide state that no library call may change."""
    return {
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": np.random.get_state()[1].tobytes(),
        "python_rng": random.getstate(),
        "threads": torch.get_num_threads(),
        "default_dtype": torch.get_default_dtype(),
        "grad_enabled": torch.is_grad_enabled(),
        "rcparams": {k: repr(v) for k, v in matplotlib.rcParams.items()},
    }


def differences(before, after, where: str = "") -> list[str]:
    """Where two snapshots differ, in words."""
    if isinstance(before, torch.Tensor):
        return [] if torch.equal(before, after) else [where]
    if type(before) is not type(after):
        return [f"{where}: kind changed"]
    if isinstance(before, dict):
        if before.keys() != after.keys():
            return [f"{where}: keys {sorted(map(str, before))} -> "
                    f"{sorted(map(str, after))}"]
        return [d for k in before for d in differences(before[k], after[k],
                                                        f"{where}[{k!r}]")]
    if isinstance(before, (list, tuple)):
        if len(before) != len(after):
            return [f"{where}: length {len(before)} -> {len(after)}"]
        return [d for i, (a, b) in enumerate(zip(before, after))
                for d in differences(a, b, f"{where}[{i}]")]
    return [] if before == after else [f"{where}: {before!r} -> {after!r}"]


def _storages(obj, out: set, seen: set) -> set:
    """data_ptrs of the storages of every tensor in obj (models included)."""
    if id(obj) in seen:
        return out
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        if obj.untyped_storage().nbytes() > 0:
            out.add(obj.untyped_storage().data_ptr())
    elif isinstance(obj, torch.nn.Module):
        for t in [*obj.parameters(), *obj.buffers()]:
            _storages(t, out, seen)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _storages(v, out, seen)
    elif isinstance(obj, dict):
        for v in obj.values():
            _storages(v, out, seen)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            _storages(getattr(obj, f.name), out, seen)
    return out


def check_call(fn: Callable, args: tuple, kwargs: dict, global_state_too: bool = True,
               may_alias: bool = False):
    """Call fn(*args, **kwargs); fail if anything reachable from the inputs changed."""
    inputs = (args, kwargs)
    before, state = snapshot(inputs), global_state()
    result = fn(*args, **kwargs)
    problems = differences(before, snapshot(inputs), "inputs")
    if global_state_too:
        problems += differences(state, global_state(), "global")
    if not may_alias:
        shared = _storages(result, set(), set()) & _storages(inputs, set(), set())
        if shared:
            problems.append("the result shares memory with an input")
    assert not problems, f"{fn.__qualname__} changed: " + "; ".join(problems[:8])
    return result


# --- the table ------------------------------------------------------------------

class Case(NamedTuple):
    name: str
    make: Callable[[], tuple]          # -> (fn, args, kwargs), fresh each time
    global_state: bool = True          # False: changing global state is its job
    may_alias: bool = False            # True: returning a view of an input is its job


def _mlp(**kw):
    return models.build("mlp", in_features=64, widths=(16,), seed=0, **kw)


def _digits(n=4, dtype=torch.float32):
    return data.load("digits", n, seed=1, dtype=dtype)


def _bn_net():
    """A model with BatchNorm in train mode (running statistics that could leak)."""
    return models.build("resnet_tiny", in_channels=1, image_size=8, width=4, seed=0)


def _fc_case():
    x, y = _digits(1, F64)
    net = _mlp(dtype=F64)
    gw, gb = fl.shared_gradients(net, x, y)[:2]
    return x, y, net, gw, gb


def _solve_case():
    gen = torch.Generator().manual_seed(0)
    deltas = torch.randn(3, 6, generator=gen, dtype=F64)
    xs = torch.randn(3, 5, generator=gen, dtype=F64)
    return deltas.T @ xs, deltas


def _last_layer_case():
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(5, 4, generator=gen, dtype=F64)
    b = torch.randn(5, generator=gen, dtype=F64)
    xs = torch.randn(3, 4, generator=gen, dtype=F64)
    labels = torch.tensor([0, 2, 4])
    d = analytic.last_layer_deltas(xs @ w.T + b, labels)
    return d.T @ xs, w, b, labels


def _images(n=3, seed=2):
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def _updates():
    net = _mlp()
    return [[torch.full_like(p, float(k)) for p in net.parameters()] for k in range(3)]


def _tensor_case():
    net = tensor.random_two_layer(6, 3000, seed=2)
    x = torch.randn(2, 6, generator=torch.Generator().manual_seed(3), dtype=F64)
    y = torch.tensor([[0.3], [-0.7]], dtype=F64)
    return net, fl.shared_gradients(net, x, y, loss="mse"), 2


def _tensor_split():
    net, (gW, ga), _ = _tensor_case()
    return net[0].weight.detach(), net[2].weight.detach()[0], gW, ga


# --- phase 2: layer-wise attacks, security, models, command line (helper robb) ----

def _rgap_case(dtype=F64):
    """A bias-free cnn6 on one 8x8 digit, R-GAP's label and logistic gradients."""
    net = models.build("cnn6", in_channels=1, image_size=8, seed=0, dtype=dtype)
    x = data.load("digits", 1, seed=1, dtype=dtype)[0]
    with torch.no_grad():
        y = torch.tensor([0 if net(x).item() > 0 else 1])
    return net, fl.shared_gradients(net, x, y, loss="logistic"), y


def _copa_case():
    """cnn3_c1 (rank-deficient) on one 12x12 digit with cross-entropy gradients."""
    net = models.build("cnn3_c1", in_channels=1, image_size=12, seed=0, dtype=F64)
    x = data.load("digits", 1, seed=1, dtype=F64, size=12)[0]
    y = torch.tensor([3])
    return net, fl.shared_gradients(net, x, y), y


def _parts(dtype=F64):
    from leakbook.attacks import layers
    net, g, y = _rgap_case(dtype)
    return net, layers.blocks(net, (1, 8, 8)), g, y


def _conv():
    conv = torch.nn.Conv2d(2, 3, 3, 2, 1).double()
    delta = torch.randn(3, 3, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    return conv, (2, 5, 5), delta


def _step_down_case():
    from leakbook.attacks import layers
    _, parts, g, _ = _parts()
    acts = layers.activations_of(parts)
    x = torch.rand(parts[-1].n_in, generator=torch.Generator().manual_seed(0),
                   dtype=F64)
    delta = torch.randn(1, generator=torch.Generator().manual_seed(1), dtype=F64)
    return parts[-1], acts[-1], x, delta, parts[-2]


def _system():
    from leakbook.attacks import layer_system
    from leakbook.attacks.layers import Block
    conv, shape, delta = _conv()
    conv.requires_grad_(False)             # as inside rgap: a gradient-free copy
    block = Block("0", conv, None, shape, (3, 3, 3), 0, 1)
    z = torch.randn(3, 3, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    grad_w = torch.randn(3, 2, 3, 3, generator=torch.Generator().manual_seed(3),
                         dtype=F64)
    return layer_system.LayerSystem(block, delta, grad_w, z)


def _audit_net():
    return models.build("cnn3_c1", in_channels=1, image_size=12, seed=0)


def _blind():
    from leakbook import security
    conv = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 2, 2), torch.nn.Flatten(),
                               torch.nn.Linear(4, 1))
    return security.blind_spot(conv, (1, 5, 5))


def _cli_args():
    return (["audit", "cnn3_c1", "--input-shape", "1", "12", "12"],)


def _figure():
    fig, _ = plt.subplots(figsize=(3, 2))
    return fig


def _animation():
    from matplotlib import animation
    fig, ax = plt.subplots(figsize=(2, 2))
    return animation.FuncAnimation(fig, lambda k: ax.set_title(f"{k}"), frames=2)


CASES = [
    # fl
    Case("fl.loss_fn", lambda: (fl.loss_fn, ("ce",), {})),
    Case("fl.forward", lambda: (fl.forward, (_bn_net(), torch.rand(2, 1, 8, 8)), {})),
    Case("fl.shared_gradients", lambda: (fl.shared_gradients, (_mlp(), *_digits()), {})),
    Case("fl.shared_gradients[batchnorm]",
         lambda: (fl.shared_gradients, (_bn_net(), torch.rand(4, 1, 8, 8),
                                        torch.tensor([0, 1, 2, 3])), {})),
    Case("fl.shared_gradients[eval mode]",
         lambda: (fl.shared_gradients, (_bn_net().eval(), torch.rand(4, 1, 8, 8),
                                        torch.tensor([0, 1, 2, 3])), {})),
    Case("fl.shared_gradients[create_graph]",
         lambda: (fl.shared_gradients,
                  (_mlp(), torch.rand(2, 1, 8, 8, requires_grad=True),
                   torch.tensor([1, 2])), {"create_graph": True})),
    Case("fl.client_update",
         lambda: (fl.client_update, (_mlp(), *_digits()),
                  {"lr": 0.1, "local_steps": 3, "batch_size": 2})),
    Case("fl.client_update[batchnorm]",
         lambda: (fl.client_update, (_bn_net(), torch.rand(4, 1, 8, 8),
                                     torch.tensor([0, 1, 2, 3])), {"local_steps": 2})),
    Case("fl.fedavg", lambda: (fl.fedavg, (_updates(),), {"weights": [1, 2, 3]})),
    Case("fl.fedavg[one update]", lambda: (fl.fedavg, (_updates()[:1],), {})),
    # data
    Case("data.load", lambda: (data.load, ("photos", 2), {"seed": 3, "size": 8})),
    Case("data.load[labels]",
         lambda: (data.load, ("digits", 0), {"labels": torch.tensor([3, 3, 1])})),
    Case("data.evaluation_set", lambda: (data.evaluation_set, ("dev",), {"size": 8})),
    Case("data.is_varied", lambda: (data.is_varied, (_images(1)[0],), {})),
    Case("data.describe", lambda: (data.describe, (), {})),
    # metrics
    Case("metrics.mse", lambda: (metrics.mse, (_images(), _images(seed=3)), {})),
    Case("metrics.psnr", lambda: (metrics.psnr, (_images(), _images(seed=3)), {})),
    Case("metrics.ssim", lambda: (metrics.ssim, (_images(), _images(seed=3)), {})),
    Case("metrics.label_accuracy",
         lambda: (metrics.label_accuracy, (torch.tensor([1, 2]), torch.tensor([2, 2])),
                  {})),
    Case("metrics.match", lambda: (metrics.match, (_images(), _images(seed=3)), {})),
    Case("metrics.flat_baseline", lambda: (metrics.flat_baseline, (_images(),), {})),
    Case("metrics.summarize", lambda: (metrics.summarize, ([3.0, 1.0, 2.0],), {})),
    Case("metrics.report",
         lambda: (metrics.report, (_images(), _images(seed=3), torch.tensor([1, 2, 3]),
                                   torch.tensor([3, 2, 1])), {})),
    # analytic
    Case("attacks.invert_fc", lambda: (analytic.invert_fc, _fc_case()[3:], {})),
    Case("FCInversion.to_reconstruction",
         lambda: (analytic.invert_fc(*_fc_case()[3:]).to_reconstruction,
                  ((1, 8, 8),), {})),
    Case("attacks.solve_fc_inputs", lambda: (analytic.solve_fc_inputs, _solve_case(), {})),
    Case("attacks.last_layer_deltas",
         lambda: (analytic.last_layer_deltas, (torch.zeros(3, 5, dtype=F64),
                                               torch.tensor([0, 2, 4])), {})),
    Case("attacks.solve_last_layer_inputs",
         lambda: (analytic.solve_last_layer_inputs, _last_layer_case(), {"steps": 5})),
    Case("Reconstruction",
         lambda: (lb.Reconstruction, (_images(),), {"labels": torch.tensor([1, 2, 3])}),
         may_alias=True),  # a record of the tensors it is given
    # tensor (chapter 09)
    Case("attacks.tensor_decomposition",
         lambda: (tensor.tensor_decomposition, _tensor_case(), {"seed": 0})),
    Case("attacks.projected_moment_tensor",
         lambda: (tensor.projected_moment_tensor, _tensor_split(),
                  {"basis": torch.eye(6, 2, dtype=F64)})),
    Case("attacks.input_span", lambda: (tensor.input_span, (_tensor_split()[2], 2), {})),
    # layer-wise attacks (chapter 07), security (chapter 08), models, command line
    Case("attacks.rgap", lambda: (recursive.rgap, _rgap_case(),
                                  {"input_shape": (1, 8, 8)})),
    Case("attacks.rgap[float32]", lambda: (recursive.rgap, _rgap_case(torch.float32),
                                           {"input_shape": (1, 8, 8)})),
    Case("attacks.copa", lambda: (hybrid.copa, _copa_case(),
                                  {"input_shape": (1, 12, 12), "steps": 5,
                                   "max_time": None, "start": "linear"})),
    Case("recursive.solve_margin", lambda: (recursive.solve_margin, (-0.1,),
                                            {"branch": "large"})),
    Case("recursive.invert_head",
         lambda: (recursive.invert_head, (_parts()[1][-1], _parts()[2], [1]), {})),
    Case("recursive.step_down", lambda: (recursive.step_down, _step_down_case(), {})),
    Case("recursive.layer_system",
         lambda: (recursive.layer_system, (_system().block, torch.ones(3, 3, 3,
                                                                       dtype=F64),
                                           _system().delta, [_system().grad_w]), {})),
    Case("LayerSystem.solve", lambda: (_system().solve, (), {"spectrum": True})),
    Case("hybrid.reached_inputs", lambda: (hybrid.reached_inputs,
                                           (_parts()[1], 2), {})),
    Case("hybrid.fill_blind",
         lambda: (hybrid.fill_blind, (_images(1)[0], _images(1)[0] > 0.8, "inpaint"),
                  {})),
    Case("layers.blocks", lambda: (layers.blocks, (_rgap_case()[0], (1, 8, 8)), {}),
         may_alias=True),  # blocks hold the model's own layers, by design
    Case("layers.activations_of", lambda: (layers.activations_of, (_parts()[1],), {}),
         may_alias=True),
    Case("linear_systems.conv_matrix",
         lambda: (linear_systems.conv_matrix, _conv()[:2], {})),
    Case("linear_systems.conv_gradient_matrix",
         lambda: (linear_systems.conv_gradient_matrix, _conv(), {})),
    Case("linear_systems.conv_csr",
         lambda: (linear_systems.conv_csr, _conv(), {"gradient": True})),
    Case("linear_systems.patch_indices",
         lambda: (linear_systems.patch_indices, _conv()[:2], {})),
    Case("linear_systems.output_shape",
         lambda: (linear_systems.output_shape, _conv()[:2], {})),
    Case("linear_systems.unread_pixels",
         lambda: (linear_systems.unread_pixels, _conv()[:2], {})),
    Case("security.audit", lambda: (security.audit, (_audit_net(), (1, 12, 12)), {})),
    Case("security.audit[model weights]",
         lambda: (security.audit, (_audit_net(), (1, 12, 12)), {"weights": "model"})),
    Case("security.estimate_cost",
         lambda: (security.estimate_cost, (_audit_net(), (1, 12, 12)), {})),
    Case("security.weight_layers",
         lambda: (security.weight_layers, (_audit_net(), (1, 12, 12)), {}),
         may_alias=True),  # rows name the model's own layers, by design
    Case("security.blind_spot",
         lambda: (security.blind_spot, (_audit_net(), (1, 12, 12)), {})),
    Case("security.psnr_cap",
         lambda: (security.psnr_cap, (torch.rand(1, 5, 5, generator=torch.Generator()
                                                  .manual_seed(0)), _blind()),
                  {"fill": "nearest"})),
    Case("security.layer_gram",
         lambda: (security.layer_gram, _conv(), {})),
    Case("security.numerical_rank",
         lambda: (security.numerical_rank, (security.layer_gram(*_conv()), 1e-6), {})),
    Case("security.rank_bound", lambda: (security.rank_bound, _conv()[:2], {})),
    Case("Audit.to_markdown",
         lambda: (security.audit(_audit_net(), (1, 12, 12)).to_markdown, (), {})),
    Case("models.build", lambda: (models.build, ("cnn6_d",), {"seed": 3})),
    Case("models.make_activation", lambda: (models.make_activation, ("tanh",), {})),
    Case("__main__.main", lambda: (cli.main, _cli_args(), {})),
    Case("__main__.load_model", lambda: (cli.load_model, ("cnn6", (3, 8, 8)), {})),
    Case("__main__.check_shape", lambda: (cli.check_shape, ([3, 8, 8],), {})),
    # gradinversion (chapter 05): the BN prior reads the running statistics
    Case("attacks.gradinversion",
         lambda: (lb.attacks.gradinversion,
                  (_bn_net(), fl.shared_gradients(_bn_net(), torch.rand(2, 1, 8, 8),
                                                  torch.tensor([0, 1])),
                   (2, 1, 8, 8), torch.tensor([0, 1])),
                  {"seeds": 2, "iterations": 3, "every": 1,
                   "regularizers": {"tv": 1e-3, "bn": 1e-2}})),
    # isolation
    Case("isolation.isolation_trial", lambda: (isolation.isolation_trial, (8, 3, 0), {})),
    Case("isolation.isolation_probabilities",
         lambda: (isolation.isolation_probabilities, (3, 0), {"rows": 100})),
    # viz (figures are closed after each call)
    Case("viz.check_figure", lambda: (viz.check_figure, (_figure(),), {})),
    Case("viz.panel_grid", lambda: (viz.panel_grid, (4,), {})),
    Case("viz.mark_baseline",
         lambda: (viz.mark_baseline, (plt.subplots(figsize=(3, 2))[1], 12.5), {})),
    Case("viz.to_numpy_image", lambda: (viz.to_numpy_image, (_images(1)[0],), {})),
    Case("viz.show_images", lambda: (viz.show_images, (_images(),), {"titles": ["a", "b", "c"]})),
    Case("viz.compare", lambda: (viz.compare, (_images(), _images(seed=3)), {})),
    Case("viz.plot_curves",
         lambda: (viz.plot_curves, ({"a": ([1, 2], [3, 4])}, "x", "y"), {})),
    Case("viz.animation_html", lambda: (viz.animation_html, (_animation(),), {})),
    # changing global state is their purpose: inputs only
    Case("seed_everything", lambda: (lb.seed_everything, (0,), {"threads": 1}),
         global_state=False),
    Case("viz.book_style", lambda: (viz.book_style, (), {}), global_state=False),
    # the validation layer itself returns what it checked (a view or the object)
    Case("checks.check_grads",
         lambda: (checks.check_grads, (_mlp(), list(_mlp().parameters())), {}),
         may_alias=True),
    Case("checks.tensor_lists", lambda: (checks.tensor_lists, (_updates(), "updates"), {}),
         may_alias=True),
    Case("checks.labels", lambda: (checks.labels, (torch.tensor([1, 2]),), {}),
         may_alias=True),
]


# --- phase 2 (helper roba): matching, labels, fedavg, optim, defenses, exercises --

from leakbook import defenses, exercises, optim  # noqa: E402
from leakbook.attacks import fedavg as fedavg_attack  # noqa: E402
from leakbook.attacks import labels as label_rules  # noqa: E402
from leakbook.attacks import matching  # noqa: E402


def _small(dtype=F64):
    """A float64 MLP on 1 x 4 x 4 inputs with 3 classes, and its gradient on 2 images."""
    net = models.build("mlp", in_features=16, widths=(6,), num_classes=3, seed=0,
                       dtype=dtype)
    x = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=dtype)
    y = torch.tensor([0, 2])
    return net, x, y, fl.shared_gradients(net, x, y)


def _bn_grads(n=2):
    net = _bn_net()
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    y = torch.arange(n) % 10
    return net, x, y, fl.shared_gradients(net, x, y)


def _ctx():
    net, x, _, _ = _bn_grads()
    stats = matching.batchnorm_statistics(net, x)
    return {"bn_seen": stats, "bn_targets": [(m + 1, v + 1) for m, v in stats]}


def _one_sample():
    net, x, y, _ = _small()
    return net, fl.shared_gradients(net, x[:1], y[:1])


def _labelled_dummies(n=24):
    x = torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(7), dtype=F64)
    return x, torch.arange(n) % 3


def _fedavg_case():
    net, x, y, _ = _small()
    update = fl.client_update(net, x, y, lr=0.5, local_steps=2)
    return net, update, tuple(x.shape), y


def _quad(z):
    return float((z ** 2).sum()), 2 * z


def _tv_answer(img):
    return ((img[..., :, 1:] - img[..., :, :-1]).abs().mean()
            + (img[..., 1:, :] - img[..., :-1, :]).abs().mean())


def _grads_list():
    return _small()[3]


CASES += [
    # attacks.matching (chapters 04, 05)
    Case("matching.dlg", lambda: (matching.dlg, (_small()[0], _small()[3], (2, 1, 4, 4)),
                                  {"max_iter": 3})),
    Case("matching.dlg[batchnorm, labels]",
         lambda: (matching.dlg, (_bn_grads()[0], _bn_grads()[3], (2, 1, 8, 8)),
                  {"labels": torch.tensor([0, 1]), "max_iter": 2,
                   "dtype": torch.float32})),
    Case("matching.idlg", lambda: (matching.idlg, (*_one_sample(), (1, 1, 4, 4)),
                                   {"max_iter": 2})),
    Case("matching.inverting_gradients[batchnorm, bn prior]",
         lambda: (matching.inverting_gradients,
                  (_bn_grads()[0], _bn_grads()[3], (2, 1, 8, 8), torch.tensor([0, 1])),
                  {"iterations": 2, "regularizers": {"tv": 1e-3, "bn": 1e-2}})),
    Case("matching.gradient_distance[batchnorm]",
         lambda: (matching.gradient_distance,
                  (_bn_grads()[0], torch.rand(2, 1, 8, 8), torch.tensor([0, 1]),
                   _bn_grads()[3]), {"distance": "cosine"})),
    Case("matching.l2_distance", lambda: (matching.l2_distance,
                                          (_grads_list(), _grads_list()),
                                          {})),
    Case("matching.cosine_distance",
         lambda: (matching.cosine_distance, (_grads_list(), _grads_list()), {})),
    Case("matching.total_variation",
         lambda: (matching.total_variation, (_images(),), {"ctx": {}})),
    Case("matching.l2_prior", lambda: (matching.l2_prior, (_images(), {}), {})),
    Case("matching.bn_statistics_prior",
         lambda: (matching.bn_statistics_prior, (_images(), _ctx()), {})),
    Case("matching.batchnorm_layers", lambda: (matching.batchnorm_layers, (_bn_net(),), {}),
         may_alias=True),  # returns the model's own layers
    Case("matching.batchnorm_statistics[train mode]",
         lambda: (matching.batchnorm_statistics, (_bn_net(), torch.rand(3, 1, 8, 8)), {})),
    # attacks.labels (chapter 03)
    *[Case(f"labels.recover[{m}]",
           lambda m=m: (label_rules.recover, (*_one_sample(), 1), {"method": m}))
      for m in ("idlg", "yin", "llg")],
    Case("labels.recover[llg+]",
         lambda: (label_rules.recover, (*_small()[::3], 2),
                  {"method": "llg+", "input_shape": (1, 4, 4), "num_dummies": 8,
                   "repeats": 1})),
    Case("labels.recover[llg*]",
         lambda: (label_rules.recover, (*_small()[::3], 2),
                  {"method": "llg*", "dummies": _labelled_dummies()[0],
                   "dummy_labels": _labelled_dummies()[1], "shadow_epochs": 1,
                   "repeats": 1})),
    Case("labels.recover[geng, batchnorm]",  # issue 14: 15 BN buffers changed
         lambda: (label_rules.recover, (*_bn_grads(4)[::3], 4),
                  {"method": "geng", "input_shape": (1, 8, 8), "num_dummies": 16})),
    Case("labels.recover[geng, refine]",
         lambda: (label_rules.recover, (*_small()[::3], 2),
                  {"method": "geng", "input_shape": (1, 4, 4), "num_dummies": 16,
                   "refine": True})),
    Case("labels.idlg",
         lambda: (label_rules.idlg, (_grads_list()[2], _grads_list()[3]), {})),
    Case("labels.yin", lambda: (label_rules.yin, (_grads_list()[2], 2), {})),
    Case("labels.llg", lambda: (label_rules.llg, (_grads_list()[2], 2), {})),
    Case("labels.geng",
         lambda: (label_rules.geng, (_grads_list()[2], _grads_list()[3], 2,
                                     torch.full((3,), 1 / 3, dtype=F64)), {})),
    Case("labels.counts_to_labels",
         lambda: (label_rules.counts_to_labels, (torch.tensor([0.4, 2.6, -1.0]), 3), {})),
    Case("labels.noise_dummies", lambda: (label_rules.noise_dummies, ((1, 4, 4), 5), {})),
    Case("labels.dummy_stats[batchnorm]",
         lambda: (label_rules.dummy_stats, (_bn_net(), torch.rand(4, 1, 8, 8)), {})),
    Case("labels.last_linear", lambda: (label_rules.last_linear, (_small()[0],), {}),
         may_alias=True),  # the model's own layer
    Case("labels.last_layer_grads", lambda: (label_rules.last_layer_grads,
                                             _small()[::3], {}),
         may_alias=True),  # float64 gradients come back as they are (no copy)
    Case("labels.impact_offset[batchnorm]",
         lambda: (label_rules.impact_offset, (_bn_net(), torch.rand(6, 1, 8, 8), 2),
                  {"repeats": 1})),
    Case("labels.shadow_model",
         lambda: (label_rules.shadow_model, (_small()[0], *_labelled_dummies()),
                  {"epochs": 1})),
    Case("labels.draw_labels", lambda: (label_rules.draw_labels, (6, 3, 0.5), {})),
    Case("labels.sample_batch",
         lambda: (label_rules.sample_batch, (*_labelled_dummies(), [0, 2]), {})),
    Case("labels.recover_fedavg",
         lambda: (label_rules.recover_fedavg, (_fedavg_case()[0], _fedavg_case()[1], 2),
                  {"lr": 0.5, "local_steps": 2, "path": "interpolate",
                   "input_shape": (1, 4, 4), "num_dummies": 8})),
    Case("labels.surrogate_inputs",
         lambda: (label_rules.surrogate_inputs, (torch.tensor([2, 0, 1]),
                                                 *_labelled_dummies()), {"seed": 3})),
    Case("labels.simulate_counts",
         lambda: (label_rules.simulate_counts,
                  (_small()[0], torch.zeros(3, dtype=F64), torch.tensor([0, 2]),
                   *_labelled_dummies()),
                  {"lr": 0.5, "local_steps": 2, "max_sweeps": 1})),
    Case("labels.count_survival",
         lambda: (label_rules.count_survival,
                  (label_rules.calibrate_counts(_small()[0], *_labelled_dummies(), 2,
                                                simulations=10),
                   *[g.detach() for g in _small()[3][-2:]]), {})),
    # attacks.fedavg (chapter 06)
    Case("fedavg.invert_fedavg",
         lambda: (fedavg_attack.invert_fedavg, _fedavg_case(),
                  {"lr": 0.5, "local_steps": 2, "iterations": 2})),
    Case("fedavg.invert_pairs",
         lambda: (fedavg_attack.invert_pairs,
                  ([(_small()[0], _small()[3])], (2, 1, 4, 4), torch.tensor([0, 2])),
                  {"iterations": 2, "optimizer": "adam"})),
    Case("fedavg.simulate_update[batchnorm]",
         lambda: (fedavg_attack.simulate_update, _bn_grads()[:3],
                  {"lr": 0.1, "local_steps": 2})),
    Case("fedavg.schedule", lambda: (fedavg_attack.schedule, (5, 3, 2), {})),
    Case("fedavg.as_gradient",
         lambda: (fedavg_attack.as_gradient, (_fedavg_case()[1], 0.5, 2), {})),
    # optim
    Case("optim.lbfgs", lambda: (optim.lbfgs, (_quad, torch.ones(3, dtype=F64)),
                                 {"max_iter": 5})),
    # defenses (chapter 10)
    Case("defenses.global_norm", lambda: (defenses.global_norm, (_updates()[1],), {})),
    Case("defenses.clip", lambda: (defenses.clip, (_updates()[2], 1.0), {})),
    Case("defenses.clip[inside the ball]",
         lambda: (defenses.clip, (_updates()[1], 1e6), {})),
    Case("defenses.gaussian_noise", lambda: (defenses.gaussian_noise, (_updates()[1], 0.1),
                                             {"seed": 3})),
    Case("defenses.relative_noise", lambda: (defenses.relative_noise, (_updates()[1], 0.5),
                                             {})),
    Case("defenses.clip_and_noise",
         lambda: (defenses.clip_and_noise, (_updates()[2], 1.0, 0.5), {"seed": 1})),
    Case("defenses.prune", lambda: (defenses.prune, (_grads_list(), 0.5), {})),
    Case("defenses.quantize[stochastic]",
         lambda: (defenses.quantize, (_grads_list(), 3), {"stochastic": True})),
    # exercises: the checks leave the learner's answer alone
    Case("exercises.check[answer function]",
         lambda: (exercises.check, ("ch05-ex-tv", _tv_answer), {})),
    Case("exercises.as_tensor", lambda: (exercises.as_tensor, (_images(),), {})),
    Case("exercises.close", lambda: (exercises.close, (_images(), _images()), {})),
    Case("exercises.same_multiset",
         lambda: (exercises.same_multiset, (torch.tensor([2, 1]), [1, 2]), {})),
]


def _stats():
    net = _small()[0]
    return label_rules.dummy_stats(net, label_rules.noise_dummies((1, 4, 4), 12,
                                                                  seed=1).double())


def _refine_case():
    net, _, _, g = _small()
    stats = _stats()
    mean, cov = label_rules.class_moments(stats)
    gb = g[3]
    return (2 * gb, 2, mean, cov, torch.tensor([0, 2]),
            label_rules.count_lower_bounds(gb, 2))


CASES += [
    Case("labels.llg_plus",
         lambda: (label_rules.llg_plus, (_grads_list()[2], 2, -0.1,
                                         torch.zeros(3, dtype=F64)), {})),
    Case("labels.class_moments", lambda: (label_rules.class_moments, (_stats(),), {})),
    Case("labels.count_lower_bounds",
         lambda: (label_rules.count_lower_bounds, (_grads_list()[3], 2), {})),
    Case("labels.refine_counts", lambda: (label_rules.refine_counts, _refine_case(), {})),
    Case("labels.span_test",
         lambda: (label_rules.span_test, (_grads_list()[2], _grads_list()[3], 1), {})),
    Case("labels.allocate",
         lambda: (label_rules.allocate, (torch.tensor([[0.9, 0.2], [0.6, 0.1],
                                                       [0.3, 0.0]], dtype=F64), 2), {})),
    Case("labels.path_softmax_mean",
         lambda: (label_rules.path_softmax_mean,
                  (_fedavg_case()[0], _fedavg_case()[1], _labelled_dummies()[0], 2), {})),
    Case("exercises.as_int", lambda: (exercises.as_int, (torch.tensor(3),), {})),
    Case("exercises.as_float", lambda: (exercises.as_float, (np.array([2.5]),), {})),
    Case("exercises.as_mask", lambda: (exercises.as_mask, (torch.tensor([1, 0]),), {})),
]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_entry_point_changes_nothing(case):
    fn, args, kwargs = case.make()
    before = (torch.get_num_threads(), dict(matplotlib.rcParams))
    torch.set_num_threads(2)  # entry points that compute on one thread restore 2
    try:
        check_call(fn, args, kwargs, case.global_state, case.may_alias)
    finally:  # the two rows that set global state on purpose are undone
        torch.set_num_threads(before[0])
        matplotlib.rcParams.update(before[1])


def _in_place(t, fn):
    with torch.no_grad():
        fn(t)


MUTATIONS = {
    "buffer": lambda m, g: m[1].running_mean.add_(1),
    "parameter value": lambda m, g: m[0].weight.data.add_(1),
    "parameter written back unchanged": lambda m, g: _in_place(m[0].weight,
                                                               lambda t: t.mul_(1.0)),
    "parameter replaced": lambda m, g: setattr(m[0], "weight", torch.nn.Parameter(
        m[0].weight.detach().clone())),
    "training flag": lambda m, g: m[1].eval(),
    "requires_grad": lambda m, g: m[0].weight.requires_grad_(False),
    ".grad": lambda m, g: setattr(m[0].weight, "grad", torch.zeros(2, 1)),
    "gradient list": lambda m, g: g.append(torch.zeros(1)),
    "gradient replaced": lambda m, g: g.__setitem__(0, g[0].clone()),
    "gradient value": lambda m, g: g[0].mul_(2),
    "global RNG": lambda m, g: torch.rand(1),
    "thread count": lambda m, g: torch.set_num_threads(3),
    "result aliases an input": lambda m, g: g[0][:1],
}


@pytest.mark.parametrize("what", list(MUTATIONS))
def test_the_snapshot_sees_every_kind_of_change(what):
    """The framework catches what it claims to: each mutation is reported."""
    model = torch.nn.Sequential(torch.nn.Linear(1, 2), torch.nn.BatchNorm1d(2))
    grads = [torch.ones(2)]
    threads = torch.get_num_threads()
    try:
        with pytest.raises(AssertionError, match="changed"):
            check_call(MUTATIONS[what], (model, grads), {})
    finally:
        torch.set_num_threads(threads)


def test_shared_gradients_leave_batchnorm_statistics_alone():
    """Issue 14: after a simulated client step the server's BN prior targets
    held the victim batch's statistics. Now the buffers stay bit-identical,
    the mode is the caller's, and BN still normalises with batch statistics
    in train mode (the gradient differs from the eval-mode one)."""
    net = _bn_net()
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3])
    buffers = {k: b.clone() for k, b in net.named_buffers()}
    train = fl.shared_gradients(net, x, y)
    update = fl.client_update(net, x, y, local_steps=2)
    assert all(torch.equal(b, buffers[k]) for k, b in net.named_buffers())
    assert net.training and all(m.training for m in net.modules())
    net.eval()
    evaluated = fl.shared_gradients(net, x, y)
    assert not net.training
    assert not torch.allclose(train[0], evaluated[0])  # batch vs running statistics
    assert len(update) == len(train)
    # what happened before: a plain forward pass in train mode writes the
    # batch's statistics into the running buffers, which the BN prior reads
    net.train()
    net(x)
    assert not torch.equal(net[1].running_mean, buffers["1.running_mean"])
