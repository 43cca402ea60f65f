# %% [markdown]
# # 03. Labels leak first
#
# ```{admonition} Objectives
# After this chapter you will be able to
# - derive, from the cross-entropy gradient at the last layer, why a shared
#   gradient gives away which labels a client's batch holds;
# - recover the label of one sample exactly (iDLG), the labels of a batch
#   with distinct labels (Yin et al.), and the label *counts* of a batch with
#   duplicates (LLG, Geng et al.) with `leakbook.attacks.labels.recover`;
# - predict when each rule fails: duplicates, batch size, activations that
#   go negative, and above all trained networks;
# - explain why the labels of a trained network are harder to count, and
#   measure how far a better estimate of the softmax mean gets.
#
# Prerequisites: chapter 01 (what the server sees: the shared gradient of a
# FedSGD round), softmax and cross-entropy.
# ```
#
# Every attack in the next chapters needs the labels. DLG {cite}`zhu2019dlg`
# searched for them together with the images, which makes a hard search
# harder; iDLG {cite}`zhao2020idlg` noticed that the label of one sample can
# simply be read off the gradient. This chapter shows how far that reading
# goes: from one sample to batches of 128 with repeated labels, and where it
# stops.

# %% tags=["hide-output"]
import json
import pathlib
import time

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import Markdown, display

import leakbook as lb
from leakbook import data, fl, metrics, models
from leakbook.attacks import labels as L
from leakbook.train import accuracy, train_classifier

lb.seed_everything(0, threads=1)  # tiny models: one thread is fastest
print(lb.__version__)
T0 = time.time()

# %% [markdown]
# We use the handwritten digits (8×8 grey, 10 classes) throughout, split
# once: 700 images to train the "trained" networks, 200 held-out images
# that play the attacker's public data, and 897 images from which client
# batches are drawn. The benchmark script of this chapter uses the same
# split.

# %%
x_all, y_all = data.load("digits", 1797, seed=0)
train_set = (x_all[:700], y_all[:700])
heldout = x_all[700:900]                  # the attacker's dummies
x_pool, y_pool = x_all[900:], y_all[900:]  # client batches come from here
print(len(train_set[0]), len(heldout), len(x_pool))

# %% [markdown]
# ## The gradient at the last layer
#
# Let the network end in a fully connected layer $z = W h + b$ with
# $W \in \mathbb{R}^{C\times n}$, where $h \in \mathbb{R}^n$ are the
# penultimate features and $C$ the number of classes. For one sample with
# label $c$ the cross-entropy is
# $\ell = -\log p_c$ with $p = \mathrm{softmax}(z)$, so
#
# $$
# \frac{\partial \ell}{\partial z_i}
# = \frac{\partial}{\partial z_i}\Big(-z_c + \log \sum_j e^{z_j}\Big)
# = p_i - y_i ,
# $$
#
# with $y$ the one-hot label. The chain rule through $z = Wh + b$ gives
# $\partial \ell / \partial b = p - y$ and
# $\partial \ell / \partial W = (p - y)\, h^\top$. A client in FedSGD
# shares the gradient of the *mean* loss over its batch of $B$ samples,
#
# $$
# \nabla b = \frac{1}{B}\sum_{k=1}^{B} (p_k - y_k), \qquad
# \nabla W = \frac{1}{B}\sum_{k=1}^{B} (p_k - y_k)\, h_k^\top .
# $$
#
# Everything in this chapter reads these two tensors. First we check them
# against autograd, in float64.

# %%
net = models.build("mlp", seed=0, widths=(32,), dtype=torch.float64)
xb, yb = x_pool[:5].double(), y_pool[:5]
grads = fl.shared_gradients(net, xb, yb)
with torch.no_grad():
    h = net[:-1](xb)                 # penultimate features (B, n)
    p = net[-1](h).softmax(-1)       # softmax outputs (B, C)
onehot = torch.nn.functional.one_hot(yb, 10).double()
gb_formula = (p - onehot).mean(0)
gw_formula = (p - onehot).T @ h / len(xb)
assert torch.allclose(grads[-1], gb_formula, atol=1e-12)
assert torch.allclose(grads[-2], gw_formula, atol=1e-12)
print("bias gradient:", gb_formula.numpy().round(3))
print("true labels:  ", yb.tolist())

# %% [markdown]
# ## One sample: the sign names the label (iDLG)
#
# With $B = 1$ the bias gradient is $p - y$: every entry is a probability
# $p_i > 0$ except the true class, where it is $p_c - 1 < 0$. The label is
# the **only negative entry of** $\nabla b$, for any activation.
#
# Without a bias, row $i$ of $\nabla W$ is $(p_i - y_i)\,h^\top$. If the
# features are non-negative ($h \ge 0$ after a ReLU or a sigmoid), the row
# sums $(p_i - y_i)\sum_j h_j$ have the sign of $p_i - y_i$, and the label
# is the row with the smallest sum — the rule in the iDLG code
# {cite}`zhao2020idlg`. With tanh, $\sum_j h_j$ can be negative and the
# sign flips.
#
# We test both rules on many random initialisations: MLPs with ReLU and
# sigmoid, and DLG's sigmoid LeNet with its $U(-0.5, 0.5)$ weights.

# %%
def idlg_inline(grads, use_bias=True):
    """The iDLG rule: negative bias entry, or smallest row sum of dL/dW."""
    score = grads[-1] if use_bias else grads[-2].sum(1)
    return int(score.argmin())


def idlg_trial(name, seed, **kw):
    """A fresh network and a random digit: is the label read right?"""
    net = models.build(name, seed=seed, **kw)
    i = (seed * 37) % len(x_pool)
    g = fl.shared_gradients(net, x_pool[i:i + 1], y_pool[i:i + 1])
    hits = {}
    for use_bias in (True, False):
        got = idlg_inline(g, use_bias)
        pkg = L.recover(net, g, 1, "idlg", use_bias=use_bias)
        assert pkg.tolist() == [got]  # the package agrees with the rule
        hits[use_bias] = got == int(y_pool[i])
    return hits


cases = {
    "MLP ReLU": ("mlp", {"widths": (32,), "activation": "relu"}),
    "MLP sigmoid": ("mlp", {"widths": (32,), "activation": "sigmoid"}),
    "LeNet sigmoid (DLG)": ("lenet_dlg", {"in_channels": 1,
                                          "image_size": 8}),
    "MLP tanh": ("mlp", {"widths": (32,), "activation": "tanh"}),
}
n_inits = 100
idlg_acc = {}
for label, (name, kw) in cases.items():
    trials = [idlg_trial(name, s, **kw) for s in range(n_inits)]
    for use_bias in (True, False):
        ok = np.mean([t[use_bias] for t in trials])
        idlg_acc[(label, use_bias)] = float(ok)
        rule = "bias sign" if use_bias else "row sums "
        print(f"{label:20s} {rule}: {ok:6.1%} of {n_inits}")

# %%
for label in cases:
    assert idlg_acc[(label, True)] == 1.0          # bias rule: always
for label in ["MLP ReLU", "MLP sigmoid", "LeNet sigmoid (DLG)"]:
    assert idlg_acc[(label, False)] == 1.0         # h >= 0: always
assert idlg_acc[("MLP tanh", False)] < 0.9         # h can be < 0: fails

# %% [markdown]
# The bias rule was right on every initialisation, and the row-sum rule too
# whenever the features are non-negative; with tanh the row-sum rule fails
# often, exactly as the derivation predicts.
#
# ### DLG's joint search for the label, on the same kind of case
#
# DLG {cite}`zhu2019dlg` does not read the label: it optimises a dummy
# image $x'$ and dummy label logits $y'$ together so that the gradient of
# $\ell(F(x'), \mathrm{softmax}(y'))$ matches the shared one, with L-BFGS
# {cite}`liu1989lbfgs`. Below is a small version (chapter 04 studies DLG
# properly): eight sigmoid MLPs at initialisation and eight trained ones, one
# digit each, 10 L-BFGS iterations. We record after every iteration whether
# the argmax of $y'$ is the true label.

# %%
def dlg_label_trace(net, grads, seed, iters=10):
    """DLG's joint optimisation; the argmax of the dummy label per step."""
    gen = torch.Generator().manual_seed(seed)
    x_d = torch.randn((1, 1, 8, 8), generator=gen).requires_grad_(True)
    y_d = torch.randn((1, 10), generator=gen).requires_grad_(True)
    opt = torch.optim.LBFGS([x_d, y_d], lr=1, max_iter=1,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        g = fl.shared_gradients(net, x_d, y_d.softmax(-1),
                                create_graph=True)
        loss = sum(((a - b) ** 2).sum() for a, b in zip(g, grads))
        loss.backward()
        return loss

    trace = []
    for _ in range(iters):
        opt.step(closure)
        trace.append(int(y_d.argmax()))
    return trace


dlg_acc, idlg_same = {}, {}
for stage in ("untrained", "trained"):
    hits, idlg_hits = [], []
    for s in range(8):
        net = models.build("mlp", seed=s, widths=(32,),
                           activation="sigmoid")
        if stage == "trained":
            train_classifier(net, *train_set, epochs=10, seed=s)
        i = (s * 37) % len(x_pool)
        g = fl.shared_gradients(net, x_pool[i:i + 1], y_pool[i:i + 1])
        trace = dlg_label_trace(net, g, seed=s)
        hits.append([t == int(y_pool[i]) for t in trace])
        idlg_hits.append(idlg_inline(g) == int(y_pool[i]))
    dlg_acc[stage] = np.mean(hits, axis=0)
    idlg_same[stage] = float(np.mean(idlg_hits))

fig, ax = plt.subplots(figsize=(6.5, 3.5))
its = np.arange(1, len(dlg_acc["untrained"]) + 1)
for stage, style in (("untrained", "-o"), ("trained", "-s")):
    ax.plot(its, dlg_acc[stage], style, label=f"DLG, {stage} MLP")
ax.axhline(1.0, color="k", ls="--", label="iDLG (no iterations), both")
ax.set(xlabel="L-BFGS iteration", ylabel="label accuracy",
       title="Reading the label vs searching for it (8 cases each)",
       ylim=(-0.05, 1.05))
ax.legend(fontsize=8)
plt.show()

# %%
assert idlg_same["untrained"] == idlg_same["trained"] == 1.0
assert dlg_acc["untrained"][0] < 1.0     # DLG needs iterations to get there
assert dlg_acc["trained"][-1] <= 0.5     # and on trained networks it is lost
print("DLG after 1 / 10 iterations, untrained:",
      dlg_acc["untrained"][[0, -1]], " trained:", dlg_acc["trained"][[0, -1]])

# %% [markdown]
# On the untrained networks DLG's label is wrong after the first iteration
# and settles after a few: each iteration costs many gradient evaluations,
# while iDLG costs none. On the trained networks DLG's label stays wrong:
# the digits are classified confidently, so $p \approx y$ and the shared
# gradient is tiny; L-BFGS sees an almost flat objective and stops near its
# random start. The sign rule does not care about the size of the
# gradient, only its sign, and stays exact. (The iDLG paper reports 79–90 %
# label accuracy for DLG on MNIST, CIFAR-100 and LFW against 100 % for
# iDLG {cite}`zhao2020idlg`.)
#
# ## Several samples with distinct labels: Yin's rule
#
# For a batch, row $i$ of $\nabla W$ sums one term per sample:
#
# $$
# B\,\nabla W_{i,:} = -\sum_{k:\,y_k = i} (1 - p_{k,i})\, h_k
#                   + \sum_{k:\,y_k \ne i} p_{k,i}\, h_k .
# $$
#
# With $h \ge 0$, a class that is **absent** from the batch has only
# non-negative terms, so its row has no negative entry. A class that is
# present subtracts its samples' features with weight $1 - p_{k,i}$, which
# at initialisation is close to $1 - 1/C$, much larger than the $p_{k,i}
# \approx 1/C$ the other samples add: its row has clearly negative entries.
# GradInversion {cite}`yin2021gradinversion` therefore takes the $B$ rows
# with the most negative minimum. It assumes that the $B$ labels are
# distinct (so $B \le C$).

# %%
net = models.build("mlp", seed=4, widths=(100,), activation="relu")
unique = torch.tensor([0, 2, 3, 5, 7, 8])
dupes = torch.tensor([3, 3, 3, 5, 5, 7])
for labs in (unique, dupes):
    xb, yb = L.sample_batch(x_pool, y_pool, labs, seed=1)
    g = fl.shared_gradients(net, xb, yb)
    row_min = g[-2].min(1).values
    yin_inline = row_min.argsort()[:len(labs)].sort().values
    assert torch.equal(yin_inline, L.recover(net, g, len(labs), "yin"))
    acc = metrics.label_accuracy(yin_inline, yb)
    print(f"true {sorted(yb.tolist())}  Yin {yin_inline.tolist()}"
          f"  accuracy {acc:.2f}")
    print("   classes with a negative row minimum:",
          (row_min < 0).nonzero().flatten().tolist())
    if torch.equal(labs, unique):
        assert acc == 1.0
    else:
        assert acc < 1.0

# %% [markdown]
# With distinct labels the rule is exact. With duplicates it still finds
# *which* classes are present (their rows are the negative ones), but it
# must output $B$ distinct classes, so every repeated label becomes a wrong
# guess. Counting needs the size of the gradient, not only its sign.
#
# ## Counting with the row sums: LLG
#
# Summing row $i$ over the features gives one number per class,
#
# $$
# g_i = \sum_j \nabla W_{ij}
#     = \frac{1}{B}\sum_k (p_{k,i} - y_{k,i})\, s_k,
#     \qquad s_k = \sum_j h_{k,j} \ge 0 .
# $$
#
# Wainakh et al.'s LLG {cite}`wainakh2022llg` uses two properties: a
# negative $g_i$ means class $i$ is present (as above), and every sample of
# class $i$ pushes $g_i$ down by roughly the same "impact"
# $m \approx -\bar s\,(1 - 1/C)/B$. LLG estimates the impact from the
# negative sums, $m = \frac{1}{B}\sum_{g_i<0} g_i\,(1 + 1/C)$, takes every
# negative class once (adding $m$ back to its $g_i$ each time), then keeps
# giving the next label to the smallest $g_i$. The package implements it as
# published. (A porting note: one public re-implementation updates a stale
# index in the second stage, so the chosen class is never corrected and
# all remaining labels go to one class.)

# %%
net = models.build("mlp", seed=5, widths=(100,), activation="relu")
labs = L.draw_labels(32, 10, 0.5, seed=3)
xb, yb = L.sample_batch(x_pool, y_pool, labs, seed=3)
g = fl.shared_gradients(net, xb, yb)
row_sums = g[-2].sum(1)
counts = torch.bincount(yb, minlength=10)
llg_labels = L.recover(net, g, 32, "llg")
present = set(yb.tolist())
assert set((row_sums < 0).nonzero().flatten().tolist()) <= present

fig, ax = plt.subplots(figsize=(6.5, 3.5))
ax.scatter(counts, -32 * row_sums, color="C0")
for c in range(10):
    ax.annotate(str(c), (counts[c], -32 * row_sums[c]), fontsize=8,
                xytext=(3, 3), textcoords="offset points")
ax.set(xlabel="true count of the class in the batch",
       ylabel=r"$-B\,g_i$ (row sum of $\nabla W$)",
       title="Row sums grow with the count, but not in equal steps")
ax.grid(alpha=0.3)
plt.show()
print("true counts:", counts.tolist())
print("LLG counts: ", torch.bincount(llg_labels, minlength=10).tolist(),
      f" accuracy {metrics.label_accuracy(llg_labels, yb):.2f}")

# %% [markdown]
# The row sums do grow with the counts, but each sample's step is
# $(1 - p_{k,i})\,s_k$, and the feature sums $s_k$ differ from sample to
# sample (a thick "8" lights up more features than a thin "1"). A single
# impact $m$ for all samples and classes cannot turn such sums into exact
# counts once the batch holds more than a handful of samples per class.
#
# ## Exact counts: Geng et al.
#
# The bias gradient avoids the features altogether. Summing the one-hot
# labels counts the classes: $\sum_k y_{k,i} = n_i$. So
#
# $$
# \nabla b_i = \bar p_i - \frac{n_i}{B}
# \quad\Longrightarrow\quad
# n_i = B\,(\bar p_i - \nabla b_i),
# \qquad \bar p = \frac{1}{B}\sum_k p_k ,
# $$
#
# which is exact if we know the batch's mean softmax $\bar p$. Geng et al.
# {cite}`geng2021general` estimate it "zero-shot": run dummy inputs through
# the known model and average their softmax, $\hat p$. The counts are then
# $\mathrm{round}(B(\hat p - \nabla b))$, adjusted to sum to $B$. Rounding
# forgives any error below one half, so the estimate is good enough when
#
# $$
# B\,\max_i |\hat p_i - \bar p_i| < \tfrac12 .
# $$
#
# The tolerance on $\hat p$ shrinks like $1/(2B)$: large batches need a
# precise softmax mean. Without a bias, the row sums give
# $g_i = \frac1B\sum_k (p_{k,i} - y_{k,i}) s_k$; assuming every sample has
# about the same feature sum $s_k \approx \hat O$ (also estimated from the
# dummies) gives $n_i \approx B(\hat p_i - g_i / \hat O)$.
#
# First the exact case: a batch of 64 with half its labels in one class,
# float64, and the true $\bar p$ (which only the client knows).

# %%
net64 = models.build("mlp", seed=1, widths=(100,), activation="relu",
                     dtype=torch.float64)
labs = L.draw_labels(64, 10, 0.5, seed=7)
xb, yb = L.sample_batch(x_pool, y_pool, labs, seed=7)
xb = xb.double()
g = fl.shared_gradients(net64, xb, yb)
with torch.no_grad():
    p_bar = net64(xb).softmax(-1).mean(0)     # needs the batch: an oracle
n_inline = 64 * (p_bar - g[-1])
print("B (p_bar - grad b):", n_inline.numpy().round(6))
print("true counts:       ", torch.bincount(yb, minlength=10).tolist())
assert torch.allclose(n_inline, torch.bincount(yb, minlength=10).double(),
                      atol=1e-9)
exact = L.recover(net64, g, 64, "geng", softmax_mean=p_bar)
assert exact.tolist() == sorted(yb.tolist())

# %% [markdown]
# Now the attacker's version. We estimate $\hat p$ from the 200 held-out
# digits and from 256 uniform-noise images, for a wide (100 units) and a
# narrow (16 units) untrained ReLU network, and compare
# $B\max_i|\hat p_i - \bar p_i|$ with the tolerance $\tfrac12$.

# %%
def estimate_error(net, xb, dummies):
    """B * max |p_hat - p_bar|: below 1/2, rounding gives exact counts."""
    with torch.no_grad():
        p_bar = net(xb).softmax(-1).mean(0)
    p_hat = L.dummy_stats(net, dummies)["softmax_mean"].float()
    return len(xb) * float((p_hat - p_bar).abs().max())


noise = L.noise_dummies((1, 8, 8), 256, seed=0)
rows = []
for width in (100, 16):
    for b in (64, 128):
        errs = {"held-out": [], "noise": []}
        for s in range(6):
            net = models.build("mlp", seed=s, widths=(width,))
            labs = L.draw_labels(b, 10, 0.5, seed=s)
            xb, _ = L.sample_batch(x_pool, y_pool, labs, seed=s)
            errs["held-out"].append(estimate_error(net, xb, heldout))
            errs["noise"].append(estimate_error(net, xb, noise))
        rows.append((width, b, max(errs["held-out"]), max(errs["noise"])))
display(Markdown(
    "| width | B | worst $B\\max_i\\lvert\\hat p_i-\\bar p_i\\rvert$, "
    "held-out | "
    "same, noise |\n|---|---|---|---|\n" + "\n".join(
        f"| {w} | {b} | {e1:.3f} | {e2:.3f} |" for w, b, e1, e2 in rows)))
assert all(e1 < 0.5 for w, b, e1, _ in rows if b == 64)  # exact at B=64
assert all(e2 > e1 for _, _, e1, e2 in rows)             # noise is worse

# %% [markdown]
# At $B = 64$ the held-out estimate stays inside the tolerance at both
# widths, so its counts are guaranteed exact. At $B = 128$ its worst case
# crosses the bound; the bound is sufficient, not necessary (rounding is
# often still right, and the benchmark below finds more than 99 % of the
# labels). Noise images are further from the digits: their error is about
# three times larger and crosses the bound already at $B = 64$, which is
# where the noise estimate starts to miscount in the benchmark.
#
# ## The benchmark: accuracy against batch size
#
# The script `benchmarks/labels.py` runs every method on 20 fresh networks
# per setting: MLPs (100 hidden units) with ReLU, leaky ReLU, sigmoid and
# tanh, a narrow ReLU MLP (16 units) and DLG's sigmoid LeNet; untrained and
# trained (10 epochs of Adam on the 700 training digits, 87–95 % test
# accuracy, in well under a second each); batches of 1 to 128 with
# *unique* labels ($B \le 10$), *random* labels (i.i.d. uniform) and
# *heavy* duplicates (half the batch in one class). Accuracy is the
# multiset label accuracy: the share of labels recovered, counted with
# multiplicity, in any order (it uses the true labels, so it scores the
# attack and is never part of it). It takes a few minutes, so the chapter
# loads its result; regenerate it with
# `PYTHONPATH=. python benchmarks/labels.py`.

# %%
bench = json.loads(pathlib.Path("data/labels_bench.json").read_text())
ROWS = [dict(zip(bench["columns"], row)) for row in bench["rows"]]
print(bench["meta"]["command"], "|", bench["meta"]["trials"], "trials |",
      bench["meta"]["seconds"], "s")


def acc(network, stage, mode, method, b=None, key="accuracy"):
    """Benchmark accuracy (or 'min'/'exact') for one setting."""
    out = {r["batch_size"]: r[key] for r in ROWS
           if (r["network"], r["stage"], r["mode"], r["method"])
           == (network, stage, mode, method)}
    return out if b is None else out[b]


METHODS = ["idlg", "yin", "llg", "geng_true", "geng_heldout", "geng_noise",
           "geng_heldout_nobias", "geng_refined"]
NAMES = {"idlg": "iDLG", "yin": "Yin", "llg": "LLG",
         "geng_true": "Geng, true p̄ (oracle)",
         "geng_heldout": "Geng, held-out p̂", "geng_noise": "Geng, noise p̂",
         "geng_heldout_nobias": "Geng no-bias, held-out",
         "geng_refined": "Geng refined (this book)"}
table_b = [1, 8, 16, 64, 128]
lines = ["| stage | labels | method | " + " | ".join(
    f"B={b}" for b in table_b) + " |",
    "|---|---|---|" + "---|" * len(table_b)]
for stage in ("untrained", "trained"):
    for mode in ("random", "heavy"):
        for m in METHODS:
            vals = acc("relu", stage, mode, m)
            cells = [f"{vals[b]:.2f}" if b in vals else "–"
                     for b in table_b]
            lines.append(f"| {stage} | {mode} | {NAMES[m]} | "
                         + " | ".join(cells) + " |")
display(Markdown("**ReLU MLP, mean label accuracy over 20 networks**\n\n"
                 + "\n".join(lines)))

# %% [markdown]
# A small live check: we recompute three entries of the table with the same
# seeds as the benchmark, so the numbers above are not taken on faith (the
# trained entries are checked on fresh batches in the last section).

# %%
def live(stage, mode, b, method_kw, trials=20, network=("mlp", 100)):
    """Mean accuracy over the benchmark's networks and batches."""
    share = {"unique": None, "random": 0.0, "heavy": 0.5}[mode]
    out = []
    for t in range(trials):
        net = models.build(network[0], seed=t, widths=(network[1],))
        if stage == "trained":
            train_classifier(net, *train_set, epochs=10, lr=1e-2, seed=t)
        seed = 1000 * t + b
        xb, yb = L.sample_batch(x_pool, y_pool,
                                L.draw_labels(b, 10, share, seed=seed),
                                seed=seed)
        g = fl.shared_gradients(net, xb, yb)
        out.append(metrics.label_accuracy(
            L.recover(net, g, b, **method_kw), yb))
    return float(np.mean(out))


checks = [("untrained", "heavy", 64, "geng_heldout",
           {"method": "geng", "dummies": heldout}),
          ("untrained", "heavy", 64, "llg", {"method": "llg"}),
          ("untrained", "random", 128, "geng_noise",
           {"method": "geng", "input_shape": (1, 8, 8)})]
for stage, mode, b, m, kw in checks:
    now, saved = live(stage, mode, b, kw), acc("relu", stage, mode, m, b)
    print(f"{stage:9s} {mode} B={b} {NAMES[m]:22s} live {now:.3f}"
          f"  benchmark {saved:.3f}")
    assert abs(now - saved) < 0.03

# %% tags=["hide-input"]
def plot_methods(ax, network, stage, mode, methods):
    for m in methods:
        vals = acc(network, stage, mode, m)
        if len(vals) > 1:
            bs = sorted(vals)
            ax.plot(bs, [vals[b] for b in bs], marker="o", markersize=3,
                    label=NAMES[m])
    ax.set_xscale("log", base=2)
    ax.set(xlabel="batch size B", ylim=(0, 1.03),
           title=f"{network}, {stage}, {mode} labels")
    ax.grid(alpha=0.3)


fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharey=True)
for r, stage in enumerate(("untrained", "trained")):
    for c, mode in enumerate(("random", "heavy")):
        plot_methods(axes[r, c], "relu", stage, mode, METHODS[1:])
for ax in axes[:, 0]:
    ax.set_ylabel("label accuracy")
axes[0, 0].legend(fontsize=7, loc="lower left")
fig.suptitle("Label accuracy against batch size (ReLU MLP, 20 networks)")
fig.tight_layout()
plt.show()

# %% [markdown]
# What the plots show, and why:
#
# - **Untrained, Geng with an estimated $\bar p$ is exact** up to $B=64$
#   with held-out dummies (more than 99 % at $B = 128$), with or without
#   duplicates: at initialisation
#   the softmax hardly depends on the input, so $\hat p \approx \bar p$
#   (the table above). Noise dummies start to miscount at $B=64$–$128$,
#   when $B\max|\hat p - \bar p|$ approaches $\tfrac12$.
# - **Yin's rule** drops as soon as labels repeat (it can only output
#   distinct classes) and stops at $B = C = 10$.
# - **LLG** falls to about 50–70 % from $B \approx 16$ on: one impact for
#   all samples cannot absorb the spread of the feature sums $s_k$.
# - **The no-bias variant** loses a few percent for the same reason: it
#   assumes one feature sum $\hat O$ for every sample.
# - **Trained networks break every zero-shot estimate**: the oracle (true
#   $\bar p$) still gives 100 %, so the identity holds, but $\hat p$ is now
#   wrong. The next section explains why. The rules that only read
#   *signs* survive training: iDLG stays exact at $B=1$, and Yin's rule
#   degrades much less at small batches, because a present class still
#   has the most negative row even when the sizes no longer add up.

# %%
r64 = {m: acc("relu", "untrained", "heavy", m, 64, key="exact")
       for m in METHODS[1:] if m != "yin"}
assert r64["geng_heldout"] == 1.0 and r64["geng_true"] == 1.0
assert acc("relu", "untrained", "heavy", "geng_heldout", 128) > 0.99
assert acc("relu", "untrained", "random", "geng_noise", 128) < 1.0
for mode in ("random", "heavy"):
    assert max(v for b, v in acc("relu", "untrained", mode, "llg").items()
               if b >= 16) < 0.75
    assert all(v < 1.0 for b, v in acc("relu", "untrained", mode,
                                       "yin").items() if b >= 4)
    for stage in ("untrained", "trained"):
        assert min(acc("relu", stage, mode, "geng_true").values()) == 1.0
    assert max(acc("relu", "trained", mode, "geng_heldout").values()) < 0.95
print("untrained ReLU, heavy duplicates, B=64: share of exact batches",
      {NAMES[m]: v for m, v in r64.items()})

# %% [markdown]
# ### Across activations and architectures
#
# The same methods at $B = 64$ with heavy duplicates, for every network in
# the benchmark.

# %% tags=["hide-input"]
nets = ["relu", "leaky_relu", "sigmoid", "tanh", "relu_narrow",
        "lenet_sigmoid"]
show = ["llg", "geng_heldout", "geng_noise", "geng_heldout_nobias",
        "geng_refined"]
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
for ax, stage in zip(axes, ("untrained", "trained")):
    w = 0.16
    for j, m in enumerate(show):
        vals = [acc(n, stage, "heavy", m, 64) for n in nets]
        ax.bar(np.arange(len(nets)) + (j - 2) * w, vals, w, label=NAMES[m])
    ax.set_xticks(np.arange(len(nets)), nets, rotation=20, fontsize=8)
    ax.set(title=f"{stage}, B=64, heavy duplicates", ylim=(0, 1.05))
    ax.grid(alpha=0.3, axis="y")
axes[0].set_ylabel("label accuracy")
axes[1].legend(fontsize=7, loc="lower right")
fig.tight_layout()
plt.show()

# %%
for n in nets:
    assert acc(n, "untrained", "heavy", "geng_heldout", 64) >= 0.99
assert acc("tanh", "untrained", "heavy", "llg", 64) < 0.5
assert acc("tanh", "untrained", "heavy", "geng_heldout_nobias", 64) < 0.8
print({n: round(acc(n, "untrained", "heavy", "llg", 64), 2) for n in nets})

# %% [markdown]
# With the bias, Geng's counts are exact at initialisation for every
# activation and for the LeNet. The rules that read $\nabla W$ instead
# depend on the sign of the features: with tanh, $s_k = \sum_j h_{k,j}$
# takes either sign, so LLG's "negative row sum means present" is simply
# false and the no-bias variant's constant $\hat O$ is meaningless.
# Leaky ReLU features are slightly negative at most and behave like ReLU.
#
# ## Trained networks: why the counts hide
#
# A trained network's softmax follows the label: $p_k \approx y_k$ for a
# digit it classifies confidently. Two things follow.
#
# 1. **$\bar p$ depends on the batch.** $\bar p \approx n / B$, the very
#    counts we want. The held-out images give $\hat p \approx$ the label
#    mix of the *held-out* set (about uniform), so
#    $B(\hat p - \nabla b)$ is pulled towards $B/C$ per class.
# 2. **Confident samples leave almost no trace.** A sample's whole
#    contribution to the gradient is scaled by $p_k - y_k$; if the model
#    is sure and right, that is close to zero, and the sample is nearly
#    invisible in *every* layer's gradient.
#
# Both are visible on one batch of 64 with heavy duplicates.

# %%
net_t = models.build("mlp", seed=0, widths=(100,), activation="relu")
train_classifier(net_t, *train_set, epochs=10, lr=1e-2, seed=0)
print(f"test accuracy of the trained MLP: "
      f"{accuracy(net_t, x_pool, y_pool):.3f}")
labs = L.draw_labels(64, 10, 0.5, seed=11)
xb, yb = L.sample_batch(x_pool, y_pool, labs, seed=11)
g = fl.shared_gradients(net_t, xb, yb)
with torch.no_grad():
    p_k = net_t(xb).softmax(-1)
p_bar_t = p_k.mean(0)
p_hat_t = L.dummy_stats(net_t, heldout)["softmax_mean"].float()
share = torch.bincount(yb, minlength=10) / 64
trace = (p_k - torch.nn.functional.one_hot(yb, 10)).norm(dim=1)

fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
w = 0.27
axes[0].bar(np.arange(10) - w, share, w, label="true share n/B")
axes[0].bar(np.arange(10), p_bar_t, w, label=r"true $\bar p$")
axes[0].bar(np.arange(10) + w, p_hat_t, w, label=r"held-out $\hat p$")
axes[0].set(xlabel="class", ylabel="share", xticks=range(10),
            title=r"$\bar p$ follows the batch; $\hat p$ cannot")
axes[0].legend(fontsize=8)
axes[1].hist(trace.clamp(min=1e-4).numpy(), bins=np.logspace(-4, 0.2, 25),
             color="C3")
axes[1].set_xscale("log")
axes[1].set(xlabel=r"$\|p_k - y_k\|$ (scales the sample's whole gradient)",
            ylabel="samples", title="Most samples barely show")
fig.tight_layout()
plt.show()
invisible = float((trace < 0.05).float().mean())
print(f"samples with |p - y| < 0.05: {invisible:.0%}")
assert (p_bar_t - share).abs().max() < (p_hat_t - share).abs().max()
assert invisible > 0.5

# %% [markdown]
# ### A refinement: estimate $\bar p$ together with the counts
#
# Zero-shot estimation fixes $\hat p$ before looking at the gradient. The
# refinement in `recover(..., method="geng", refine=True)` lets the
# gradient correct it, in three steps.
#
# 1. **Hard lower bounds.** $\bar p_i \ge 0$, so
#    $n_i = B(\bar p_i - \nabla b_i) \ge -B\,\nabla b_i$: every class with a
#    negative bias gradient is present at least
#    $\lceil -B\nabla b_i\rceil$ times. This holds for any network at any
#    stage of training.
# 2. **A per-class model of $\bar p$.** Label each held-out image with the
#    model's own prediction (no true labels needed), and measure for each
#    class $c$ the mean $\mu_c$ and covariance $\Sigma_c$ of a sample's
#    bias gradient $p - e_c$. A batch with counts $n$ then has
#    $B\nabla b \approx \sum_c n_c \mu_c$, that is
#    $\bar p \approx \frac1B \sum_c n_c\, \bar p^{(c)}$: the softmax mean
#    now moves with the counts instead of staying fixed.
# 3. **The most probable counts.** Score counts $n$ (summing to $B$, above
#    the bounds) by the Gaussian log-likelihood of $B\nabla b$ with mean
#    $\sum_c n_c\mu_c$ and covariance $\sum_c n_c\Sigma_c$, plus a uniform
#    multinomial prior, and move one label at a time from the zero-shot
#    counts while the score improves.
#
# On untrained networks every class looks alike ($\mu_c \approx \hat p -
# e_c$), and the refinement returns Geng's counts. On trained networks:

# %%
zero, refined = [], []
for s in range(8):
    labs = L.draw_labels(64, 10, 0.5, seed=100 + s)
    xb, yb = L.sample_batch(x_pool, y_pool, labs, seed=100 + s)
    g = fl.shared_gradients(net_t, xb, yb)
    zero.append(metrics.label_accuracy(
        L.recover(net_t, g, 64, "geng", dummies=heldout), yb))
    refined.append(metrics.label_accuracy(
        L.recover(net_t, g, 64, "geng", dummies=heldout, refine=True), yb))
print(f"trained ReLU MLP, B=64, heavy duplicates, 8 batches: zero-shot "
      f"{np.mean(zero):.3f}, refined {np.mean(refined):.3f}")
assert np.mean(refined) > np.mean(zero)

# %% tags=["hide-input"]
def trained_mean(method, mode, networks=nets):
    vals = [v for n in networks for v in acc(n, "trained", mode,
                                             method).values()]
    return float(np.mean(vals))


lines = ["| labels | Geng held-out (zero-shot) | Geng noise | "
         "Geng refined | LLG | oracle |", "|---|---|---|---|---|---|"]
summary = {}
for mode in ("unique", "random", "heavy"):
    summary[mode] = {m: trained_mean(m, mode) for m in
                     ("geng_heldout", "geng_noise", "geng_refined", "llg",
                      "geng_true")}
    s = summary[mode]
    lines.append(f"| {mode} | {s['geng_heldout']:.3f} | "
                 f"{s['geng_noise']:.3f} | {s['geng_refined']:.3f} | "
                 f"{s['llg']:.3f} | {s['geng_true']:.3f} |")
display(Markdown("**Trained networks: mean accuracy over all six networks "
                 "and all batch sizes (benchmark)**\n\n" + "\n".join(lines)))

fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), sharey=True)
for ax, mode in zip(axes, ("unique", "random", "heavy")):
    plot_methods(ax, "sigmoid", "trained", mode,
                 ["llg", "geng_heldout", "geng_noise", "geng_refined"])
axes[0].set_ylabel("label accuracy")
axes[0].legend(fontsize=7, loc="lower left")
fig.tight_layout()
plt.show()

# %%
overall_zero = np.mean([summary[m]["geng_heldout"] for m in summary])
overall_ref = np.mean([summary[m]["geng_refined"] for m in summary])
print(f"trained, all settings: zero-shot {overall_zero:.3f}, "
      f"refined {overall_ref:.3f}")
assert overall_ref > overall_zero
assert summary["heavy"]["geng_refined"] > summary["heavy"]["geng_heldout"]
assert summary["unique"]["geng_refined"] > summary["unique"]["geng_heldout"]
assert min(summary[m]["geng_true"] for m in summary) == 1.0
assert max(summary[m]["geng_refined"] for m in summary) < 0.9

# %% [markdown]
# How far this gets: the refinement beats the zero-shot estimate on
# trained networks overall, clearly with duplicates and at small batches
# (where the lower bounds alone often pin the labels down), but it is
# still far from the oracle's 100 %, and on large batches with i.i.d.
# labels it is slightly worse than zero-shot, whose "about $B/C$ per class"
# guess happens to fit such batches. The ceiling is the second point
# above: confidently classified samples are nearly invisible in the
# gradient, so their number can only be guessed from the prior. Labels
# leak completely from networks early in training, and partially later.
#
# ## Explore
#
# Pick the batch size, the share of the batch that repeats one label, the
# method, and an untrained or trained ReLU MLP. The bars compare the true
# counts with the recovered ones. (In the online book the figure below is
# the static default: batch 64, half duplicates, Geng with held-out
# dummies, untrained; run the notebook to move the sliders.)

# %%
explore_nets = {
    "untrained": models.build("mlp", seed=0, widths=(100,)),
    "trained": net_t,
}
explore_methods = {
    "Yin": {"method": "yin"}, "LLG": {"method": "llg"},
    "Geng, held-out": {"method": "geng", "dummies": heldout},
    "Geng, noise": {"method": "geng", "input_shape": (1, 8, 8)},
    "Geng refined": {"method": "geng", "dummies": heldout, "refine": True},
}


def explore(batch_size=64, duplicate_share=0.5, method="Geng, held-out",
            stage="untrained", seed=0):
    net = explore_nets[stage]
    if method == "Yin" and batch_size > 10:
        print("Yin's rule needs B <= 10 distinct labels")
        return None
    labs = L.draw_labels(batch_size, 10, duplicate_share, seed=seed)
    xb, yb = L.sample_batch(x_pool, y_pool, labs, seed=seed)
    g = fl.shared_gradients(net, xb, yb)
    got = L.recover(net, g, batch_size, **explore_methods[method])
    a = metrics.label_accuracy(got, yb)
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    ax.bar(np.arange(10) - 0.2, torch.bincount(yb, minlength=10), 0.4,
           label="true")
    ax.bar(np.arange(10) + 0.2, torch.bincount(got, minlength=10), 0.4,
           label="recovered")
    ax.set(xlabel="class", ylabel="count", xticks=range(10),
           title=f"{method}, {stage}, B={batch_size}: accuracy {a:.2f}")
    ax.legend(fontsize=8)
    plt.show()
    return a


static = explore()   # the static figure for the book
assert static == 1.0

# %%
widgets.interact(
    explore,
    batch_size=widgets.IntSlider(64, 1, 128, description="batch size"),
    duplicate_share=widgets.FloatSlider(0.5, min=0.0, max=1.0, step=0.1,
                                        description="duplicates"),
    method=widgets.Dropdown(options=list(explore_methods),
                            value="Geng, held-out"),
    stage=widgets.ToggleButtons(options=["untrained", "trained"]),
    seed=widgets.IntSlider(0, 0, 20, description="seed"));

# %% [markdown]
# ## Summary
#
# - At the last layer, cross-entropy gives $\nabla b = \bar p - n/B$ and
#   $\nabla W = \frac1B\sum_k (p_k - y_k)h_k^\top$: the label counts sit in
#   the shared gradient next to the softmax mean.
# - One sample: the one negative entry of $\nabla b$ is the label, always
#   (iDLG); the row-sum version needs non-negative features. DLG's joint
#   search needs iterations and gets lost on trained networks.
# - Distinct labels: the rows with the most negative entries (Yin).
#   Duplicates: LLG's fixed impact miscounts from $B\approx16$ on; Geng's
#   $n = B(\hat p - \nabla b)$ is exact whenever
#   $B\max|\hat p - \bar p| < \tfrac12$; with held-out dummies it was
#   exact on untrained networks at $B = 64$ for every activation we tried.
# - Trained networks hide their counts: $\bar p$ follows the batch, and
#   confident samples barely contribute. Lower bounds from $\nabla b$ and a
#   per-class model of $\bar p$ recover part of the loss; the rest is
#   invisible in the gradient.
#
# ## Exercises

# %% [markdown]
# ```{exercise-start}
# :label: ch03-ex-idlg
# ```
# A fresh tanh MLP shares the gradient of one digit (below). Recover its
# label from the bias gradient alone, and check your answer with
# `lb.exercises.check("ch03-ex-idlg", label, grad_bias)`.
#
# ```python
# net = models.build("mlp", seed=42, widths=(20,), activation="tanh")
# g = fl.shared_gradients(net, x_pool[3:4], y_pool[3:4])
# grad_bias = g[-1]
# ```
# ```{exercise-end}
# ```

# %% [markdown]
# ```{solution-start} ch03-ex-idlg
# :class: dropdown
# ```

# %%
net = models.build("mlp", seed=42, widths=(20,), activation="tanh")
g = fl.shared_gradients(net, x_pool[3:4], y_pool[3:4])
grad_bias = g[-1]
label = int(grad_bias.argmin())   # the only negative entry: p_c - 1
assert lb.exercises.check("ch03-ex-idlg", label, grad_bias)

# %% [markdown]
# ```{solution-end}
# ```

# %% [markdown]
# ```{exercise-start}
# :label: ch03-ex-counts
# ```
# A client trains on a batch of 32 digits with repeated labels. You are
# given the true softmax mean `p_bar` (as if you had a perfect estimate).
# Compute the class counts, a tensor of 10 numbers, from the bias gradient
# and check them with
# `lb.exercises.check("ch03-ex-counts", counts, grad_bias, p_bar, 32)`.
#
# ```python
# net = models.build("mlp", seed=9, widths=(50,), dtype=torch.float64)
# labs = L.draw_labels(32, 10, 0.4, seed=9)
# xb, yb = L.sample_batch(x_pool, y_pool, labs, seed=9)
# grad_bias = fl.shared_gradients(net, xb.double(), yb)[-1]
# with torch.no_grad():
#     p_bar = net(xb.double()).softmax(-1).mean(0)
# ```
# ```{exercise-end}
# ```

# %% [markdown]
# ```{solution-start} ch03-ex-counts
# :class: dropdown
# ```

# %%
net = models.build("mlp", seed=9, widths=(50,), dtype=torch.float64)
labs = L.draw_labels(32, 10, 0.4, seed=9)
xb, yb = L.sample_batch(x_pool, y_pool, labs, seed=9)
grad_bias = fl.shared_gradients(net, xb.double(), yb)[-1]
with torch.no_grad():
    p_bar = net(xb.double()).softmax(-1).mean(0)
counts = (32 * (p_bar - grad_bias)).round()
assert lb.exercises.check("ch03-ex-counts", counts, grad_bias, p_bar, 32)
assert counts.tolist() == torch.bincount(yb, minlength=10).tolist()

# %% [markdown]
# ```{solution-end}
# ```

# %% [markdown]
# ```{exercise-start}
# :label: ch03-ex-tolerance
# ```
# With $B = 64$, how large may the worst error $\max_i|\hat p_i - \bar
# p_i|$ of a softmax-mean estimate be, at most, so that rounding
# $B(\hat p - \nabla b)$ is guaranteed to give the exact counts? Check your
# number with `lb.exercises.check("ch03-ex-tolerance", answer, 64)`. Then
# measure the error of the noise estimate for the untrained ReLU MLP
# `models.build("mlp", seed=0, widths=(16,))` on a batch of 64 and say
# whether it is within the bound.
# ```{exercise-end}
# ```

# %% [markdown]
# ```{solution-start} ch03-ex-tolerance
# :class: dropdown
# ```

# %%
answer = 1 / (2 * 64)   # B |p_hat - p_bar| < 1/2 per class
assert lb.exercises.check("ch03-ex-tolerance", answer, 64)
net = models.build("mlp", seed=0, widths=(16,))
xb, _ = L.sample_batch(x_pool, y_pool, L.draw_labels(64, 10, 0.5, seed=0),
                       seed=0)
err = estimate_error(net, xb, noise) / 64
print(f"noise estimate: max error {err:.5f}, bound {answer:.5f}, "
      f"within: {err < answer}")

# %% [markdown]
# ```{solution-end}
# ```
#
# ## References
#
# The methods of this chapter: iDLG {cite}`zhao2020idlg`, GradInversion's
# label rule {cite}`yin2021gradinversion`, LLG {cite}`wainakh2022llg` and
# Geng et al.'s counts {cite}`geng2021general`; DLG
# {cite}`zhu2019dlg` for the joint search, in the federated setting of
# {cite}`mcmahan2017fedavg`. The full list is on the bibliography page.

# %%
print(f"chapter executed in {time.time() - T0:.1f} s")
