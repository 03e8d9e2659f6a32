"""Pictures: cases with ground truth and prediction (``lightmedseg show``), and LightMedSeg's anchors S and texture
map T on one case (``lightmedseg anchors``). matplotlib is an optional dependency (the ``figures`` extra).

Both write a PNG of an exact pixel size: ``width`` pixels wide and ``figure_height(width, rows)`` high, i.e. square
panels (three per row, each image fitted inside with its physical aspect ratio) plus a band for legends.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from nnunetv2_lightmedseg.export import CHECKPOINT, DeploymentError

DPI = 100
LEGEND_BAND_PX = 60
TITLE_PX = 20
OVERLAY_ALPHA = 0.45
FIGURES_HINT = 'pip install "nnunetv2-lightmedseg[figures]"'


# ----------------------------------------------------------------------------------------------------- plotting
def figure_height(width: int, rows: int) -> int:
    """Pixel height of a figure of ``rows`` rows of three square panels, ``width`` pixels wide."""
    return int(round(rows * width / 3)) + LEGEND_BAND_PX


def new_figure(width: int, rows: int, right: float = 0.99):
    """A matplotlib figure and its (rows, 3) axes, sized to ``width`` x ``figure_height(width, rows)`` pixels;
    ``right`` is where the axes end (room for a colour bar), as a fraction of the width."""
    try:
        import matplotlib
        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise DeploymentError(f"pictures need matplotlib: {FIGURES_HINT}") from error
    height = figure_height(width, rows)
    fig, axes = plt.subplots(rows, 3, figsize=(width / DPI, height / DPI), dpi=DPI, squeeze=False)
    # leave the legend band free at the bottom; no tight bbox on saving, so the pixel size stays exact
    fig.subplots_adjust(left=0.01, right=right, top=1 - TITLE_PX / height, bottom=LEGEND_BAND_PX / height,
                        wspace=0.03, hspace=TITLE_PX / (width / 3))
    return fig, axes


def save_figure(fig, output: Union[str, Path]) -> Path:
    import matplotlib.pyplot as plt
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=DPI)
    plt.close(fig)
    return output


def show_image(ax, image: np.ndarray, aspect: float, title: str) -> None:
    """A grey image slice, windowed to its 0.5-99.5th percentiles (robust to a few bright voxels)."""
    low, high = np.percentile(image, [0.5, 99.5])
    ax.imshow(image, cmap="gray", vmin=low, vmax=high if high > low else low + 1, aspect=aspect,
              interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def label_colours(num_values: int) -> np.ndarray:
    """RGBA per label value 0..num_values - 1: value 0 transparent, the others tab10 colours, semi-transparent."""
    from matplotlib import colormaps
    colours = np.array([colormaps["tab10"](i % 10) for i in range(max(num_values - 1, 0))]).reshape(-1, 4)
    colours[:, 3] = OVERLAY_ALPHA
    return np.concatenate([np.zeros((1, 4)), colours])


def label_names(labels: dict) -> dict[int, str]:
    """Label value -> name from dataset.json's ``labels``. Region-based datasets (a name maps to a list of values)
    name each value after the smallest region holding it (BraTS: 3 -> enhancing tumour, not whole tumour)."""
    names: dict[int, tuple[int, str]] = {}
    for name, value in labels.items():
        values = value if isinstance(value, list) else [value]
        for v in values:
            if v != 0 and (v not in names or len(values) < names[v][0]):
                names[v] = (len(values), name)
    return {v: name for v, (_, name) in sorted(names.items())}


# --------------------------------------------------------------------------------------------------------- show
def read_volume(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Array (z, y, x) and spacing (z, y, x) of an image file, read with SimpleITK; a clear error if missing."""
    import SimpleITK as sitk
    if not path.is_file():
        raise DeploymentError(f"{path} does not exist: check the folder and the case name (nnU-Net naming: images "
                              f"CASE_0000.nii.gz, labels and predictions CASE.nii.gz)")
    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), tuple(reversed(image.GetSpacing()))


def find_dataset_json(*folders: Path) -> Path:
    """dataset.json in the first of ``folders`` (or their parents) that has one: nnU-Net writes it into every
    prediction folder, and a raw dataset keeps it beside imagesTs and labelsTs."""
    for folder in folders:
        for candidate in (folder / "dataset.json", folder.parent / "dataset.json"):
            if candidate.is_file():
                return candidate
    raise DeploymentError(f"no dataset.json in {', '.join(map(str, folders))} or their parent folders: give one with "
                          f"--dataset-json (the label names come from it)")


def choose_slice(label: np.ndarray, prediction: np.ndarray, how: str, labels: dict) -> int:
    """The axial (z) slice to show. ``how``: "most" (most ground-truth foreground; prediction's if the ground truth
    is empty), an index, or a label name (the slice through that label's centre of mass in the ground truth)."""
    from scipy.ndimage import center_of_mass
    if how.lstrip("-").isdigit():
        index = int(how)
        if not -label.shape[0] <= index < label.shape[0]:
            raise DeploymentError(f"--slice {index} is outside the volume's {label.shape[0]} axial slices")
        return index % label.shape[0]
    if how == "most":
        mask = label > 0 if label.any() else prediction > 0
        return int(mask.sum(axis=(1, 2)).argmax()) if mask.any() else label.shape[0] // 2
    if how not in labels:
        raise DeploymentError(f"--slice {how!r} is neither 'most', a slice index nor a label of dataset.json "
                              f"({', '.join(n for n in labels if n != 'background')})")
    values = labels[how] if isinstance(labels[how], list) else [labels[how]]
    mask = np.isin(label, values)
    if not mask.any():
        return int(choose_slice(label, prediction, "most", labels))
    return int(round(center_of_mass(mask)[0]))


def show_cases(images: Union[str, Path], labels: Union[str, Path], predictions: Union[str, Path],
               output: Union[str, Path], cases: Optional[Sequence[str]] = None, num_cases: int = 3,
               width: int = 1200, slice_: str = "most", channel: int = 0,
               dataset_json: Optional[Union[str, Path]] = None) -> Path:
    """One row per case: image, image + ground truth, image + prediction, on one axial slice (``choose_slice``)."""
    images, labels, predictions = Path(images), Path(labels), Path(predictions)
    dataset = json.loads(Path(dataset_json or find_dataset_json(predictions, labels)).read_text())
    ending = dataset["file_ending"]
    if cases is None:
        cases = sorted(p.name[:-len(ending)] for p in predictions.glob(f"*{ending}"))[:num_cases]
        if not cases:
            raise DeploymentError(f"{predictions} holds no predictions (*{ending}): predict first (nnUNetv2_predict "
                                  f"or lightmedseg predict-onnx), or give the right folder")
    names = label_names(dataset["labels"])
    colours = label_colours(max(names, default=0) + 1)
    fig, axes = new_figure(width, len(cases))
    for row, case in zip(axes, cases):
        image, spacing = read_volume(images / f"{case}_{channel:04d}{ending}")
        label, _ = read_volume(labels / f"{case}{ending}")
        prediction, _ = read_volume(predictions / f"{case}{ending}")
        if not image.shape == label.shape == prediction.shape:
            raise DeploymentError(f"case {case}: image {image.shape}, label {label.shape} and prediction "
                                  f"{prediction.shape} differ in shape: give predictions in the images' geometry")
        z = choose_slice(label, prediction, slice_, dataset["labels"])
        aspect = spacing[1] / spacing[2]
        for ax, overlay, title in zip(row, (None, label, prediction), ("image", "ground truth", "prediction")):
            show_image(ax, image[z], aspect, f"{case}, slice {z}: {title}")
            if overlay is not None:
                ax.imshow(colours[np.clip(overlay[z], 0, len(colours) - 1)], aspect=aspect, interpolation="nearest")
    _legend(fig, [(colours[v], name) for v, name in names.items()])
    return save_figure(fig, output)


def _legend(fig, entries: Sequence[tuple]) -> None:
    """A legend of colour patches in the band at the bottom: two lines of at most 4 entries fit its height."""
    from matplotlib.patches import Patch
    handles = [Patch(facecolor=tuple(colour[:3]), alpha=max(float(colour[3]), 0.6), label=str(name))
               for colour, name in entries]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), frameon=False, fontsize=8)


# ------------------------------------------------------------------------------------------------------ anchors
def case_files(images: Path, case: str, ending: str, channels: int) -> list[str]:
    """The channel files CASE_0000..CASE_{channels-1} of one case (nnU-Net naming), all present."""
    files = [images / f"{case}_{c:04d}{ending}" for c in range(channels)]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise DeploymentError(f"case {case!r}: {', '.join(missing)} missing; the model takes {channels} channel(s) "
                              f"named CASE_0000{ending}, CASE_0001{ending}, ... in the images folder")
    return [str(f) for f in files]


def network_input(data: np.ndarray, patch_size: Sequence[int], stride: Sequence[int], whole: bool) -> np.ndarray:
    """The centred patch of ``data`` (C, z, y, x) the network sees: cropped to ``patch_size`` where larger, padded
    with zeros (nnU-Net's ``pad_nd_image``, as its sliding window pads) where smaller. ``whole``: the whole image,
    padded up to a multiple of ``stride``."""
    from acvl_utils.cropping_and_padding.padding import pad_nd_image
    if whole:
        return pad_nd_image(data, None, "constant", {"constant_values": 0}, False, list(stride))
    starts = [max(0, (s - p) // 2) for s, p in zip(data.shape[1:], patch_size)]
    crop = data[(slice(None), *[slice(b, b + p) for b, p in zip(starts, patch_size)])]
    return pad_nd_image(crop, list(patch_size), "constant", {"constant_values": 0})


def run_priors(network, x: np.ndarray):
    """(anchor positions (K, 3) in voxel index coordinates of ``x``, confidences (K,), texture T resized to x's
    grid or None) from LightMedSeg's ``forward_with_priors``.

    Anchors are normalised (z, y, x) coordinates of the network's input whose voxel centres sit at (i + 0.5) / n
    (``normalized_grid``); so voxel index = position * n - 0.5, the coordinate matplotlib's imshow uses.
    """
    import torch
    import torch.nn.functional as F
    if not hasattr(network, "forward_with_priors"):
        raise DeploymentError(f"this model's network ({type(network).__name__}) has no anchors: `lightmedseg anchors` "
                              f"needs a LightMedSeg model (an nnUNetTrainerLightMedSeg* trainer)")
    tensor = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None]
    with torch.no_grad():
        _, priors = network.forward_with_priors(tensor)
    if priors.anchors is None:
        raise DeploymentError("this LightMedSeg model was trained with use_anchors=False: it has no anchors to show")
    size = np.array(x.shape[1:], dtype=np.float64)
    positions = priors.anchors.positions[0].double().numpy() * size - 0.5
    texture = None
    if priors.texture is not None:
        texture = F.interpolate(priors.texture.float(), size=x.shape[1:], mode="trilinear", align_corners=False)
        texture = texture[0, 0].numpy()
    return positions, priors.anchors.confidence[0].numpy(), texture


#: the three orthogonal planes: name, the axis cut, and the (row axis, column axis) shown
PLANES = (("axial", 0, (1, 2)), ("coronal", 1, (0, 2)), ("sagittal", 2, (0, 1)))


def anchor_figure(model_folder: Union[str, Path], fold: Union[int, str], images: Union[str, Path], case: str,
                  output: Union[str, Path], checkpoint: str = CHECKPOINT, width: int = 1200,
                  whole: bool = False) -> Path:
    """Row 1: three orthogonal slices through the centre of the network's input with the K anchors projected onto
    them (numbered markers); row 2: the texture map T (upsampled to the image grid) over the same slices."""
    from matplotlib import colormaps

    from nnunetv2_lightmedseg.export import load_predictor, predictor_network, total_stride
    predictor = load_predictor(model_folder, [fold], checkpoint)
    configuration = predictor.configuration_manager
    ending = predictor.dataset_json["file_ending"]
    files = case_files(Path(images), case, ending, len(predictor.dataset_json["channel_names"]))
    # nnU-Net's own preprocessing (transpose, crop to non-zero, resample to the plan's spacing, normalise)
    data, _, _ = configuration.preprocessor_class(verbose=False).run_case(
        files, None, predictor.plans_manager, configuration, predictor.dataset_json)
    x = network_input(data, configuration.patch_size, total_stride(predictor), whole)
    positions, confidence, texture = run_priors(predictor_network(predictor), x)
    spacing = configuration.spacing
    centre = [n // 2 for n in x.shape[1:]]
    fig, axes = new_figure(width, 1 if texture is None else 2, right=0.99 if texture is None else 0.94)
    colours = [colormaps["tab10"](k % 10) for k in range(len(positions))]
    for column, (plane, cut, (rows, cols)) in enumerate(PLANES):
        index = [slice(None)] * 3
        index[cut] = centre[cut]
        aspect = spacing[rows] / spacing[cols]
        title = f"{case + ': ' if column == 0 else ''}{plane}, {'zyx'[cut]} = {centre[cut]}"
        show_image(axes[0, column], x[0][tuple(index)], aspect, title + ", anchors S")
        for k, (position, colour) in enumerate(zip(positions, colours)):
            axes[0, column].plot(position[cols], position[rows], "o", color=colour, markersize=7,
                                 markeredgecolor="white")
            axes[0, column].annotate(str(k + 1), (position[cols], position[rows]), color=colour, fontsize=9,
                                     xytext=(4, 4), textcoords="offset points", fontweight="bold")
        if texture is not None:
            show_image(axes[1, column], x[0][tuple(index)], aspect, title + ", texture map T")
            shown = axes[1, column].imshow(texture[tuple(index)], cmap="magma", vmin=0, vmax=1, alpha=0.55,
                                           aspect=aspect, interpolation="bilinear")
    if texture is not None:  # the colour bar in the margin right of the texture row
        row = axes[1, 2].get_position()
        fig.colorbar(shown, cax=fig.add_axes((0.95, row.y0, 0.012, row.height)), label="T")
    _legend(fig, [(colour, f"S{k + 1} (confidence {c:.2f})") for k, (colour, c) in enumerate(zip(colours, confidence))])
    return save_figure(fig, output)
