"""Offline datasets: real images that installed packages ship, nothing downloaded.

Taught in chapter 01. Every dataset comes from a file inside scikit-learn or
scikit-image, so ``load`` works without a network.

digits  1797 handwritten digits, 8x8 grey, 10 classes. UCI optdigits,
        shipped with scikit-learn (BSD-3-Clause).
faces   100 faces from Labeled Faces in the Wild, 25x25 grey, label 1
        (``nonfaces=True`` adds 100 non-faces, label 0). Shipped with
        scikit-image; LFW states no licence (research and teaching use).
photos  random crops of 10 bundled photographs, RGB, 32x32 by default;
        class k is the k-th source in ``PHOTO_SOURCES`` (public domain,
        CC0, or CC-BY 2.0 for scikit-learn's two sample images). A crop that
        is nearly flat (see ``is_varied``) is drawn again, so no attack is
        scored on a dark or constant patch that a flat image already matches.

``evaluation_set(split)`` is the fixed set of varied images on which the book
scores every attack: one crop of each photograph, a face and a digit.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from . import checks
from .threads import one_thread

NAMES = ("digits", "faces", "photos")

#: photograph -> (loader, licence). Class k of "photos" is the k-th entry.
PHOTO_SOURCES = {
    "astronaut": ("skimage", "public domain (NASA)"),
    "chelsea": ("skimage", "CC0, Stefan van der Walt"),
    "coffee": ("skimage", "CC0, Rachel Michetti"),
    "rocket": ("skimage", "public domain (SpaceX)"),
    "coins": ("skimage", "no known copyright restrictions (Brooklyn Museum)"),
    "immunohistochemistry": ("skimage", "no known copyright restrictions"),
    "retina": ("skimage", "CC0, Mikael Haggstrom"),
    "camera": ("skimage", "CC0, Lav Varshney"),
    "china": ("sklearn", "CC-BY 2.0, scikit-learn sample image"),
    "flower": ("sklearn", "CC-BY 2.0, scikit-learn sample image"),
}

_photo_cache: dict[str, np.ndarray] = {}

#: the largest image side ``load`` and ``evaluation_set`` resize to
MAX_SIZE = 1024


def _check_name(name) -> None:
    if not isinstance(name, str):
        checks.fail("name", f"a dataset name, one of {NAMES}", name, TypeError)
    if name not in NAMES:
        raise ValueError(f"unknown dataset {name!r}: name must be one of {NAMES}")


def _photo(name: str) -> np.ndarray:
    """One bundled photograph as float32 (H, W, 3) in [0, 1]."""
    if name not in _photo_cache:
        if PHOTO_SOURCES[name][0] == "skimage":
            import skimage.data
            img = getattr(skimage.data, name)()
        else:
            from sklearn.datasets import load_sample_image
            img = load_sample_image(f"{name}.jpg")
        img = np.asarray(img, dtype=np.float32)
        img = img / 255.0 if img.max() > 1.0 else img
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        _photo_cache[name] = img[..., :3]
    return _photo_cache[name]


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return x, torch.tensor(d.target, dtype=torch.long)


def _faces(nonfaces: bool) -> tuple[torch.Tensor, torch.Tensor]:
    import skimage.data
    imgs = skimage.data.lfw_subset()  # first 100 faces, then 100 non-faces
    x = torch.tensor(imgs, dtype=torch.float32).unsqueeze(1)
    y = torch.cat([torch.ones(100), torch.zeros(100)]).long()
    return (x, y) if nonfaces else (x[:100], y[:100])


#: A crop is "varied" if its mean lies in MEAN_RANGE and its standard deviation
#: (over pixels and channels) is at least MIN_STD.
MEAN_RANGE, MIN_STD = (0.15, 0.85), 0.08
_MAX_DRAWS = 200


def is_varied(img: torch.Tensor) -> bool:
    """The rule every default photo crop passes: not dark, not bright, not flat.

    img: (C, H, W) in [0, 1]. True if MEAN_RANGE[0] <= mean <= MEAN_RANGE[1]
    and std >= MIN_STD. A flat image of the mean colour scores high PSNR on a
    crop that fails it, which would flatter any attack.
    """
    checks.tensor(img, "img", "float", dims=3, nonempty=True)
    if img[0].numel() < 2:
        checks.fail("img", "an image (C, H, W) of at least 2 pixels", img)
    mean, std = float(img.mean()), float(img.std())
    return MEAN_RANGE[0] <= mean <= MEAN_RANGE[1] and std >= MIN_STD


def _resize(img: torch.Tensor, size: int, mode: str = "area") -> torch.Tensor:
    """(C, h, w) -> (C, size, size) in [0, 1]."""
    if img.shape[-1] == size and img.shape[-2] == size:
        return img
    kw = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(img[None], size=(size, size), mode=mode, **kw)[0].clamp(0, 1)


def _one_crop(img: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random square crop of (C, H, W), its side 25-60 % of the shorter side."""
    h, w = img.shape[1:]
    side = int(min(h, w) * (0.25 + 0.35 * torch.rand(1, generator=gen).item()))
    top = torch.randint(h - side + 1, (1,), generator=gen).item()
    left = torch.randint(w - side + 1, (1,), generator=gen).item()
    return img[:, top:top + side, left:left + side]


def _photo_crops(n: int, size: int, gen: torch.Generator, labels: torch.Tensor | None,
                 varied: bool) -> tuple[torch.Tensor, torch.Tensor]:
    names = list(PHOTO_SOURCES)
    if labels is None:
        labels = torch.randint(len(names), (n,), generator=gen)
    crops = []
    for k in labels.tolist():
        img = torch.from_numpy(_photo(names[k])).permute(2, 0, 1)
        for _ in range(_MAX_DRAWS):  # judged at 32x32, so every size gets the same crop
            crop = _one_crop(img, gen)
            if not varied or is_varied(_resize(crop, 32)):
                break
        else:  # pragma: no cover - every bundled photo has varied crops
            raise RuntimeError(f"no varied crop of {names[k]} in {_MAX_DRAWS} draws")
        crops.append(_resize(crop, size))
    return torch.stack(crops), labels.long()


def load(name: str, n: int, seed: int = 0, size: int | None = None,
         rgb: bool = False, labels=None, nonfaces: bool = False,
         dtype: torch.dtype = torch.float32,
         varied: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Load ``n`` images of a bundled dataset.

    name: "digits", "faces" or "photos" (see the module docstring).
    n: number of images (a positive int); drawn without replacement where the
        set allows.
    seed: which images are drawn (and, for "photos", which crops).
    size: resize to size x size, 1..MAX_SIZE (default: native; "photos" 32).
    rgb: repeat a grey channel three times.
    labels: optional sequence of wanted integer labels, one per image,
        duplicates allowed (a batch with chosen labels); overrides ``n``.
    nonfaces: "faces" only; add the 100 non-faces (label 0).
    dtype: a floating dtype (pixels are never rounded to integers).
    varied: "photos" only; redraw crops that fail ``is_varied`` (default).
    Returns x: (n, C, H, W) in [0, 1] and y: (n,) int64. Taught in chapter 01.
    """
    with one_thread():
        _check_name(name)
        if labels is not None:
            labels = checks.labels(labels, "labels")
            if len(labels) == 0:
                checks.fail("labels", "at least one label", labels)
            checks.integer(n, "n")  # ignored: one image per label
            n = len(labels)
        else:
            n = checks.integer(n, "n", 1, what="a positive integer")
        seed = checks.seed(seed)
        if size is not None:
            size = checks.integer(size, "size", 1, MAX_SIZE,
                                  what=f"a positive integer up to {MAX_SIZE}")
        rgb = checks.flag(rgb, "rgb")
        nonfaces = checks.flag(nonfaces, "nonfaces")
        varied = checks.flag(varied, "varied")
        dtype = checks.float_dtype(dtype)
        if nonfaces and name != "faces":
            raise ValueError(f"nonfaces must be False for dataset {name!r}, got True "
                             f"(non-faces exist only in 'faces')")
        gen = torch.Generator().manual_seed(seed)
        if name == "photos":
            top = len(PHOTO_SOURCES) - 1
            if labels is not None and (labels > top).any():
                checks.fail("labels", f"photo labels in 0..{top} (one per source "
                                      f"photograph)", labels.tolist())
            x, y = _photo_crops(n, size or 32, gen, labels, varied)
        else:
            pool_x, pool_y = _digits() if name == "digits" else _faces(nonfaces)
            idx = _pick(pool_y, n, gen, labels, name)
            x, y = pool_x[idx], pool_y[idx]
            if size is not None and size != x.shape[-1]:
                x = torch.stack([_resize(v, size, "bilinear") for v in x])
        if rgb and x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        return x.to(dtype), y


def _pick(pool_y: torch.Tensor, n: int, gen: torch.Generator, labels,
          name: str) -> torch.Tensor:
    """Indices of n samples: random, or one per wanted label (distinct samples)."""
    if labels is None:
        if n > len(pool_y):
            checks.fail("n", f"at most {len(pool_y)} ({name} has {len(pool_y)} images)",
                        n)
        return torch.randperm(len(pool_y), generator=gen)[:n]
    idx = []
    for lab in labels.unique().tolist():
        cands = (pool_y == lab).nonzero().flatten()
        want = int((labels == lab).sum())
        if len(cands) == 0:
            checks.fail("labels", f"labels that {name} has (it has no image with "
                                  f"label {lab}; its labels are "
                                  f"{sorted(set(pool_y.tolist()))})", labels.tolist())
        if want > len(cands):
            raise ValueError(f"labels must ask for at most {len(cands)} images of "
                             f"label {lab} ({name} has {len(cands)}), got {want}")
        idx.append(cands[torch.randperm(len(cands), generator=gen)[:want]])
    # put the picks back in the order the labels were asked for
    by_label = {lab: list(i.tolist()) for lab, i in zip(labels.unique().tolist(), idx)}
    return torch.tensor([by_label[lab].pop() for lab in labels.tolist()])


#: split -> seed. Defaults are chosen on "dev"; the book reports "test".
EVALUATION_SPLITS = {"dev": 0, "test": 1}
#: What each image of the evaluation set is, in order.
EVALUATION_NAMES = (*PHOTO_SOURCES, "face", "digit")


def evaluation_set(split: str = "test", size: int = 32, rgb: bool = True,
                   dtype: torch.dtype = torch.float32
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The book's evaluation set: 12 varied images, one from each source.

    The rule: with the split's seed, one varied crop of each of the 10
    photographs (``PHOTO_SOURCES`` order), then the first face and the first
    digit of a seeded shuffle that pass ``is_varied`` at 32x32. Names are in
    ``EVALUATION_NAMES``. "dev" is where attack defaults are tuned, "test"
    (other crops, another face and digit) is what the book reports.
    size: side of the square images; rgb: three channels (grey ones repeated),
        else one (photos converted to luminance).
    Returns x: (12, C, size, size) in [0, 1] and y: (12,) = 0..11, the image's
    position (labels are arbitrary for an untrained network; use y % classes).
    """
    with one_thread():
        checks.choice(split, "split", EVALUATION_SPLITS)
        size = checks.integer(size, "size", 1, MAX_SIZE,
                              what=f"a positive integer up to {MAX_SIZE}")
        rgb = checks.flag(rgb, "rgb")
        dtype = checks.float_dtype(dtype)
        gen = torch.Generator().manual_seed(1000 + EVALUATION_SPLITS[split])
        photos, _ = _photo_crops(len(PHOTO_SOURCES), size, gen,
                                 torch.arange(len(PHOTO_SOURCES)), varied=True)
        images = [p for p in photos]
        for pool in (_faces(False)[0], _digits()[0]):
            for i in torch.randperm(len(pool), generator=gen).tolist():
                if is_varied(_resize(pool[i], 32, "bilinear")):
                    images.append(_resize(pool[i], size, "bilinear").repeat(3, 1, 1))
                    break
        x = torch.stack(images)
        if not rgb:
            luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            x = (x * luma).sum(1, keepdim=True)
        return x.to(dtype), torch.arange(len(x))


def describe() -> str:
    """A short credit line for each dataset, as the book prints it."""
    lines = ["digits: UCI optdigits, shipped with scikit-learn (BSD-3-Clause)",
             "faces: Labeled Faces in the Wild subset, shipped with scikit-image",
             "photos: " + "; ".join(f"{k} ({v[1]})" for k, v in PHOTO_SOURCES.items())]
    return "\n".join(lines)
