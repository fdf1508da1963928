"""Scanner-like appearance of a synthetic MRI sequence: contrast, bias field, blur, thick slices, Rician noise.

Used by the realistic phantoms (:func:`medcnncad.data.phantom.make_realistic_phantom`): a
noiseless tissue-mixture image goes through what a scanner adds, in acquisition order:
per-sequence contrast (a gamma on the signal relative to white matter), a smooth
multiplicative bias field, partial-volume blur, slice-profile blur along the slice axis,
then Rician noise (the magnitude of a complex signal with Gaussian noise in both channels,
so dark tissue gets a positive noise floor as on real magnitude images).

Arrays are (K, J, I) = (z, y, x) on a 1 mm isotropic grid; sigmas are in mm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medcnncad.errors import InputError

__all__ = ["ScannerConfig", "bias_field", "rician", "scan"]


@dataclass(frozen=True)
class ScannerConfig:
    """Ranges a scanner's appearance is drawn from, per sequence (uniform within each range).

    Attributes:
        gamma: exponent on the signal relative to white matter (contrast compression < 1 <
            expansion).
        bias_strength: standard deviation of the log bias field (0.3: about +-35 %).
        bias_scale_mm: smoothing sigma of the bias field (mm; larger is smoother).
        blur_mm: isotropic partial-volume blur sigma (mm).
        rician_noise: noise standard deviation as a fraction of the white-matter signal.
    """

    gamma: tuple[float, float] = (0.8, 1.25)
    bias_strength: tuple[float, float] = (0.05, 0.35)
    bias_scale_mm: tuple[float, float] = (40.0, 80.0)
    blur_mm: tuple[float, float] = (0.0, 0.9)
    rician_noise: tuple[float, float] = (0.015, 0.07)

    def __post_init__(self) -> None:
        for name in ("gamma", "bias_strength", "bias_scale_mm", "blur_mm", "rician_noise"):
            low, high = getattr(self, name)
            if low < 0 or high < low:
                raise InputError(f"scanner {name} {getattr(self, name)}: need 0 <= low <= high")


def bias_field(rng: np.random.Generator, shape: tuple[int, ...], strength: float, scale_mm: float) -> np.ndarray:
    """A smooth multiplicative field ``exp(strength * n)``, ``n`` unit-std noise smoothed at ``scale_mm``.

    Computed on a 4x coarser grid and interpolated (cubic), so it costs little on a whole head.
    """
    coarse_shape = tuple(max(2, s // 4) for s in shape)
    noise = ndimage.gaussian_filter(rng.standard_normal(coarse_shape), scale_mm / 4, mode="reflect")
    noise = (noise - noise.mean()) / max(float(noise.std()), 1e-9)
    fine = ndimage.zoom(noise, [s / c for s, c in zip(shape, coarse_shape)], order=3, mode="nearest")
    fine = fine[tuple(slice(0, s) for s in shape)]
    pad = [(0, s - f) for s, f in zip(shape, fine.shape)]
    fine = np.pad(fine, pad, mode="edge")
    return np.exp(strength * fine).astype(np.float32)


def rician(rng: np.random.Generator, image: np.ndarray, sigma: float) -> np.ndarray:
    """Rician noise: ``|image + n1 + i n2|`` with ``n1, n2`` Gaussian of std ``sigma`` (float32)."""
    real = image + rng.normal(0.0, sigma, image.shape).astype(np.float32)
    imag = rng.normal(0.0, sigma, image.shape).astype(np.float32)
    return np.sqrt(real * real + imag * imag).astype(np.float32)


def scan(rng: np.random.Generator, image: np.ndarray, wm_level: float, config: ScannerConfig,
         slice_axis: int = 0, slice_mm: float = 1.0) -> tuple[np.ndarray, dict[str, float]]:
    """What a scanner does to a noiseless image: contrast, bias, blur, slice profile, Rician noise.

    Args:
        rng: random generator.
        image: noiseless signal (K, J, I), 1 mm voxels, >= 0.
        wm_level: the image's white-matter signal (contrast and noise are relative to it).
        config: ranges to draw from.
        slice_axis: KJI axis along which the slices are thick.
        slice_mm: slice thickness (mm); > 1.2 blurs along ``slice_axis`` (Gaussian, FWHM = thickness).

    Returns:
        The scanned image (float32, >= 0) and the values drawn.
    """
    gamma = rng.uniform(*config.gamma)
    strength = rng.uniform(*config.bias_strength)
    scale = rng.uniform(*config.bias_scale_mm)
    blur = rng.uniform(*config.blur_mm)
    noise = rng.uniform(*config.rician_noise)
    level = max(wm_level, 1e-6)
    out = (np.power(np.clip(image, 0, None) / level, gamma) * level).astype(np.float32)
    out *= bias_field(rng, out.shape, strength, scale)
    if blur > 0.3:
        out = ndimage.gaussian_filter(out, blur)
    if slice_mm > 1.2:
        out = ndimage.gaussian_filter1d(out, slice_mm / 2.355, axis=slice_axis)
    out = rician(rng, out, noise * level)
    return out, {"gamma": float(gamma), "bias": float(strength), "blur_mm": float(blur), "noise": float(noise)}
