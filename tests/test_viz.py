"""leakbook.viz: one figure style, figures that fit a phone's column."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import leakbook as lb  # noqa: E402
from leakbook import viz  # noqa: E402


@pytest.fixture(autouse=True)
def _style():
    with matplotlib.rc_context():
        viz.book_style()
        yield
        plt.close("all")


def _texts(fig):
    return [t for t in fig.findobj(matplotlib.text.Text) if t.get_text().strip()]


def test_style_sets_vector_text_and_minimum_sizes():
    rc = matplotlib.rcParams
    assert rc["svg.fonttype"] == "none" and rc["animation.frame_format"] == "svg"
    assert rc["figure.figsize"][0] <= viz.MAX_WIDTH
    keys = ("font.size", "axes.titlesize", "axes.labelsize", "xtick.labelsize",
            "ytick.labelsize", "legend.fontsize", "figure.titlesize")
    assert min(float(rc[k]) for k in keys) >= viz.MIN_FONT


def test_check_figure_names_what_breaks_the_rule():
    fig, ax = plt.subplots(figsize=(7, 2))
    ax.set_title("tiny", fontsize=6)
    with pytest.raises(ValueError, match=r"width 7.00 in.*'tiny' at 6.0 pt"):
        viz.check_figure(fig)
    fig, ax = plt.subplots(figsize=(4, 2))
    ax.set_title("fine")
    viz.check_figure(fig)


def test_compare_fits_a_column_and_sets_each_psnr_beside_its_baseline():
    x = torch.rand(12, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    fig = viz.compare(x, (x + 0.05).clamp(0, 1), names=["truth", "noisy"])
    viz.check_figure(fig)
    titles = [t.get_text() for t in _texts(fig)]
    assert sum(t.startswith("flat ") for t in titles) == 12
    assert sum(t.endswith(" dB") for t in titles) == 12
    assert len(fig.axes) == 3 * 2 * 5  # 12 images: three blocks of five columns


def test_show_images_and_panel_grid_fit_a_column():
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    viz.check_figure(viz.show_images(x, titles=[str(i) for i in range(16)]))
    fig, axes = viz.panel_grid(7)
    assert len(axes) == 7 and len(fig.axes) == 7
    assert fig.get_figwidth() <= viz.MAX_WIDTH
    assert {ax.get_subplotspec().colspan.start for ax in axes} == {0, 1, 2}
    with pytest.raises(ValueError, match="n must be"):
        viz.panel_grid(0)


def test_plot_curves_and_baseline_marker():
    ax = viz.plot_curves({"a": ([1, 2], [3, 4]), "b": ([1, 2], [4, 5])}, "x", "PSNR (dB)")
    viz.mark_baseline(ax, 3.5)
    viz.check_figure(ax.figure)
    assert any(line.get_label() == "flat baseline" for line in ax.get_lines())


def test_animation_frames_are_svg_under_the_book_style():
    from matplotlib import animation
    fig, ax = plt.subplots(figsize=(3, 2))
    anim = animation.FuncAnimation(fig, lambda k: ax.set_title(f"frame {k}"), frames=2)
    html = viz.animation_html(anim)
    assert "data:image/svg+xml;base64" in html and "https://" not in html


def test_book_figures_from_the_package_use_the_style():
    x, _ = lb.data.load("digits", 3)
    viz.check_figure(viz.compare(x, x))
