"""Synthetic 3D segmentation datasets in nnU-Net raw format, generated on the spot (no download).

Each case holds three labelled structures whose intensities overlap each other and the background, unlabelled
distractor blobs of the same intensities, a smooth multiplicative bias field and Gaussian noise, so that a
network must use shape and boundaries, not a threshold:
  1 "core": an ellipsoid;  2 "wall": a shell of varying thickness around the core (like a myocardium);
  3 "tube": a long curved tube, clear of the wall.
``regions=True`` instead writes a BraTS-like, two-channel, region-based dataset: nested labels 1 (outer),
2 (middle), 3 (inner), trained as regions [1, 2, 3], [2, 3], [3], with channel 0 showing the outer two and
channel 1 the inner one.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

LABELS = {"background": 0, "core": 1, "wall": 2, "tube": 3}
REGION_LABELS = {"background": 0, "outer": [1, 2, 3], "middle": [2, 3], "inner": [3]}


def _grid(shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """Physical coordinates (mm) of voxel centres, (3, D, H, W)."""
    return np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")).astype(np.float32)


def _ellipsoid_distance(grid: np.ndarray, centre: np.ndarray, radii: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """Normalised ellipsoid 'radius' at each voxel: < 1 inside."""
    local = np.tensordot(rotation.T, grid - centre[:, None, None, None], axes=1)
    return np.sqrt(((local / radii[:, None, None, None]) ** 2).sum(0))


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def _smooth_field(rng: np.random.Generator, grid: np.ndarray, extent: np.ndarray, strength: float) -> np.ndarray:
    """A smooth multiplicative field exp(sum of a few low-frequency cosines), mean about 1."""
    field = np.zeros(grid.shape[1:], np.float32)
    for _ in range(3):
        freq = rng.uniform(0.3, 1.2, size=3) * np.pi / extent
        phase = rng.uniform(0, 2 * np.pi)
        field += np.cos(np.tensordot(freq, grid, axes=1) + phase).astype(np.float32)
    return np.exp(strength * field / 3)


def _tube(rng: np.random.Generator, grid: np.ndarray, extent: np.ndarray, clear_of) -> np.ndarray:
    """A long curved tube (a quadratic Bezier curve swept by a sphere) inside the volume, clear of the structure
    whose distance (mm, > 0 outside) ``clear_of(points)`` returns for points (3, N).

    The curve is 0.45 to 1.2 times the volume's longest extent long, so that its shape, not its intensity, tells it
    from the round distractor blobs; its centre line keeps 1.5 radii from the volume's faces and, when the
    rejection sampling finds one within 200 draws, 1.5 radii from the structure (else the clearest draw is taken).
    """
    radius = rng.uniform(0.06, 0.08) * extent.min()
    low, high = radius * 1.5, extent - radius * 1.5
    t = np.linspace(0, 1, 64)[:, None]
    best, best_score = None, -np.inf
    for _ in range(200):
        p0, p1, p2 = rng.uniform(low, high, size=(3, 3))
        curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2  # (64, 3)
        length = np.linalg.norm(np.diff(curve, axis=0), axis=1).sum()
        clearance = clear_of(curve.T) / radius
        if length < 0.45 * extent.max() or length > 1.2 * extent.max():
            continue
        score = min(clearance.min(), 2.0) + length / extent.max()
        if clearance.min() > 1.5:
            best = curve
            break
        if score > best_score:
            best, best_score = curve, score
    if best is None:  # only for odd shapes: fall back to a straight tube along the longest axis
        axis = int(np.argmax(extent))
        best = np.repeat((extent / 2)[None], 64, axis=0)
        best[:, axis] = np.linspace(low[axis], high[axis], 64)
    mask = np.zeros(grid.shape[1:], bool)
    for point in best[::2]:  # points about a radius apart or closer: a smooth tube
        mask |= ((grid - point[:, None, None, None]) ** 2).sum(0) < radius ** 2
    return mask


def make_case(rng: np.random.Generator, shape: Sequence[int], spacing: Sequence[float], regions: bool = False
              ) -> tuple[np.ndarray, np.ndarray]:
    """One case: images (C, D, H, W) float32 and labels (D, H, W) uint8."""
    grid = _grid(shape, spacing)
    extent = np.array(shape, np.float32) * np.array(spacing, np.float32)
    centre_frac = rng.uniform(0.3, 0.7, size=3)
    centre = centre_frac * extent
    rotation = _random_rotation(rng)
    radii = rng.uniform(0.12, 0.2, size=3) * extent.min()
    r = _ellipsoid_distance(grid, centre, radii, rotation)
    base_thickness = rng.uniform(0.35, 0.6)
    thickness = base_thickness * (1 + 0.25 * np.cos(np.arctan2(grid[2] - centre[2], grid[1] - centre[1])))
    core, shell = r < 1, (r >= 1) & (r < 1 + thickness)

    def outside_wall(points: np.ndarray) -> np.ndarray:
        """Roughly how far (mm) points (3, N) lie outside the wall's outer surface (negative: inside)."""
        local = rotation.T @ (points - centre[:, None])
        return (np.sqrt(((local / radii[:, None]) ** 2).sum(0)) - (1 + 1.25 * base_thickness)) * radii.min()

    labels = np.zeros(shape, np.uint8)
    if regions:
        inner = r < rng.uniform(0.45, 0.65)
        labels[shell] = 1
        labels[core] = 2
        labels[inner] = 3
        means = [(0.0, 0.0), (1.0, 0.2), (1.3, 0.4), (0.9, 1.4)]  # per label, per channel
        num_channels = 2
    else:
        tube = _tube(rng, grid, extent, outside_wall) & ~core & ~shell
        labels[shell] = 2
        labels[core] = 1
        labels[tube] = 3
        # overlapping intensities: core and tube alike, wall between them and the background
        means = [(0.0,), (1.0,), (0.55,), (0.9,)]
        num_channels = 1

    images = np.zeros((num_channels,) + tuple(shape), np.float32)
    for label, mean in enumerate(means):
        for c in range(num_channels):
            images[c][labels == label] = mean[c]
    # unlabelled distractors with the structures' intensities but other shapes (small blobs)
    for _ in range(rng.integers(3, 6)):
        blob_centre = rng.uniform(0.1, 0.9, size=3) * extent
        blob = ((grid - blob_centre[:, None, None, None]) ** 2).sum(0) < (rng.uniform(0.04, 0.07) * extent.min()) ** 2
        blob &= labels == 0
        for c in range(num_channels):
            images[c][blob] = rng.choice([m[c] for m in means[1:]])
    for c in range(num_channels):
        images[c] *= _smooth_field(rng, grid, extent, 0.4)
        images[c] += rng.normal(0, 0.25, size=shape).astype(np.float32)
        images[c] = 100 + 60 * images[c]  # MRI-like arbitrary units
    return images, labels


def _write(array: np.ndarray, path: Path, spacing: Sequence[float]) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in spacing[::-1]))  # SimpleITK spacing is (x, y, z)
    sitk.WriteImage(image, str(path), useCompression=True)


def make_dataset(root: str | Path, dataset_id: int = 990, name: str = "LightMedSegDemo", num_train: int = 10,
                 num_test: int = 0, shape: Sequence[int] = (32, 32, 32), spacing: Sequence[float] = (1.0, 1.0, 1.0),
                 regions: bool = False, seed: int = 0) -> Path:
    """Write ``Dataset{id:03d}_{name}`` under ``root`` (imagesTr, labelsTr, dataset.json; imagesTs and labelsTs
    when ``num_test`` > 0) and return its folder. Deterministic for a given seed."""
    folder = Path(root) / f"Dataset{dataset_id:03d}_{name}"
    rng = np.random.default_rng(seed)
    for split, count in (("Tr", num_train), ("Ts", num_test)):
        if count == 0:
            continue
        (folder / f"images{split}").mkdir(parents=True, exist_ok=True)
        (folder / f"labels{split}").mkdir(parents=True, exist_ok=True)
        for i in range(count):
            case = f"{name.lower()}_{split.lower()}{i:03d}"
            images, labels = make_case(rng, shape, spacing, regions)
            for c, channel in enumerate(images):
                _write(channel, folder / f"images{split}" / f"{case}_{c:04d}.nii.gz", spacing)
            _write(labels, folder / f"labels{split}" / f"{case}.nii.gz", spacing)
    dataset = {
        "channel_names": {"0": "FLAIR-like", "1": "T1c-like"} if regions else {"0": "MRI"},
        "labels": REGION_LABELS if regions else LABELS,
        "numTraining": num_train,
        "file_ending": ".nii.gz",
        "name": name,
        "description": "Synthetic shapes with overlapping intensities, bias field and noise (nnunetv2-lightmedseg)",
    }
    if regions:
        dataset["regions_class_order"] = [1, 2, 3]
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    return folder
