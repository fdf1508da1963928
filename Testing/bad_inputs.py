"""A generated corpus of malformed and hostile inputs for the CLI, the engine API and the Slicer Logic.

Each :class:`Case` builds its files in a fresh folder and returns the ``medcnncad`` arguments;
``expect`` is ``"ok"`` (a correct result), ``"error"`` (one clear error, exit code 2) or
``"any"`` (randomly damaged bytes that a reader may or may not still accept: either outcome
is fine, a traceback, a hang or partial outputs are not).
"""

from __future__ import annotations

import gzip
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "Resources" / "Models" / "brats-demo-unet"
CHANNELS = ("T1", "T1c", "T2", "FLAIR")
FORMATS = (".nii.gz", ".nii", ".nrrd", ".mha")


@dataclass
class Case:
    name: str
    build: Callable[[Path], list[str]]
    expect: str  # "ok", "error" or "any"
    fragment: str = ""  # must appear in the error line


def _image(array: np.ndarray, spacing=(2.0, 2.0, 2.0), origin=(0.0, 0.0, 0.0),
           direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    if image.GetDimension() == 3:
        image.SetSpacing(spacing)
        image.SetOrigin(origin)
        image.SetDirection(direction)
    return image


def _brain(shape=(20, 24, 24), seed=0) -> np.ndarray:
    """A small ellipsoid 'head' with a bright blob: enough for the demo model to run."""
    z, y, x = np.indices(shape)
    c = (np.array(shape) - 1) / 2
    inside = ((z - c[0]) / (shape[0] / 2.4)) ** 2 + ((y - c[1]) / (shape[1] / 2.4)) ** 2 + \
             ((x - c[2]) / (shape[2] / 2.4)) ** 2 < 1
    rng = np.random.default_rng(seed)
    vol = inside * (500 + 20 * rng.standard_normal(shape))
    vol[inside & (((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2] - 3) ** 2) < 9)] *= 1.8
    return vol.astype(np.float32)


def _write(image: sitk.Image, path: Path) -> str:
    sitk.WriteImage(image, str(path))
    return str(path)


def _channels(folder: Path, replace: dict[str, str] | None = None, fmt: str = ".nii.gz") -> list[str]:
    args = []
    for i, name in enumerate(CHANNELS):
        path = (replace or {}).get(name) or _write(_image(_brain(seed=i)), folder / f"{name}{fmt}")
        args += ["--input", f"{name}={path}"]
    return args


def _segment(folder: Path, *extra: str, model: str = "demo") -> list[str]:
    out = folder / "out"
    out.mkdir(exist_ok=True)
    (out / "earlier-result.txt").write_text("kept")  # a failed run must leave this folder as it was
    return ["segment", "--model", model, "--device", "cpu", "--out", str(out), *extra]


def _labels(shape=(6, 7, 8), values=(0, 1, 2)) -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.choice(values, size=shape).astype(np.uint8)


# -- corruptions of an otherwise valid file ----------------------------------------------------

def _corrupt(kind: str, path: Path) -> None:
    data = path.read_bytes()
    rng = np.random.default_rng(len(data) + len(kind))
    if kind == "empty":
        path.write_bytes(b"")
    elif kind.startswith("truncated"):
        path.write_bytes(data[: max(1, int(len(data) * int(kind[9:]) / 100))])
    elif kind == "random_bytes":
        path.write_bytes(rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    elif kind == "header_noise":
        noisy = bytearray(data)
        for i in rng.choice(min(len(data), 300), 40, replace=False):
            noisy[i] = int(rng.integers(0, 256))
        path.write_bytes(bytes(noisy))
    elif kind == "text":
        path.write_text("this is not an image\n" * 20)
    elif kind == "gzip_of_garbage":
        path.write_bytes(gzip.compress(b"\x00garbage" * 500))


CORRUPTIONS = {"empty": "error", "truncated10": "error", "truncated50": "error", "truncated95": "error",
               "random_bytes": "error", "header_noise": "any", "text": "error", "gzip_of_garbage": "error"}


def _corrupt_file(fmt: str, kind: str, folder: Path, labels: bool) -> str:
    array = _labels() if labels else _brain()
    path = Path(_write(_image(array), folder / f"bad{fmt}"))
    _corrupt(kind, path)
    return str(path)


def _reader_cases() -> list[Case]:
    cases = []
    for fmt in FORMATS:
        for kind, expect in CORRUPTIONS.items():
            def as_pred(folder, fmt=fmt, kind=kind):
                ref = _write(_image(_labels()), folder / "ref.nii.gz")
                return ["evaluate", "--pred", _corrupt_file(fmt, kind, folder, True), "--ref", ref]

            def as_ref(folder, fmt=fmt, kind=kind):
                pred = _write(_image(_labels()), folder / "pred.nii.gz")
                return ["evaluate", "--pred", pred, "--ref", _corrupt_file(fmt, kind, folder, True)]

            def as_channel(folder, fmt=fmt, kind=kind):
                bad = _corrupt_file(fmt, kind, folder, False)
                return _segment(folder, *_channels(folder, {"T1c": bad}))

            cases += [Case(f"evaluate pred {kind}{fmt}", as_pred, expect, "bad"),
                      Case(f"evaluate ref {kind}{fmt}", as_ref, expect, "bad"),
                      Case(f"segment channel {kind}{fmt}", as_channel, expect, "bad")]
    return cases


# -- label maps ----------------------------------------------------------------------------------

def _label_value_cases() -> list[Case]:
    arrays = {
        "non_integer": ("error", lambda: _labels().astype(np.float32) + 0.5, ".nii.gz"),
        "negative": ("error", lambda: _labels().astype(np.int16) - 3, ".nii.gz"),
        "above_65535": ("error", lambda: _labels().astype(np.int32) * 40000, ".nii.gz"),
        "nan": ("error", lambda: np.where(_labels() > 0, np.nan, 0).astype(np.float32), ".mha"),
        "inf": ("error", lambda: np.where(_labels() > 0, np.inf, 0).astype(np.float32), ".mha"),
        "unexpected_values": ("ok", lambda: _labels(values=(0, 7, 200)), ".nii.gz"),
        "all_background": ("ok", lambda: np.zeros((6, 7, 8), np.uint8), ".nii.gz"),
        "all_foreground": ("ok", lambda: np.ones((6, 7, 8), np.uint8), ".nii.gz"),
    }
    for dtype in (np.uint8, np.int8, np.uint16, np.int16, np.int32, np.uint32, np.int64, np.float32, np.float64):
        arrays[f"dtype_{np.dtype(dtype).name}"] = ("ok", lambda d=dtype: _labels().astype(d), ".nrrd")
    cases = []
    for name, (expect, make, fmt) in arrays.items():
        def as_pred(folder, make=make, fmt=fmt):
            ref = _write(_image(_labels()), folder / "ref.nii.gz")
            return ["evaluate", "--pred", _write(_image(make()), folder / f"bad{fmt}"), "--ref", ref, "--json"]

        def as_ref(folder, make=make, fmt=fmt):
            pred = _write(_image(_labels()), folder / "pred.nii.gz")
            return ["evaluate", "--pred", pred, "--ref", _write(_image(make()), folder / f"bad{fmt}"), "--json"]

        cases += [Case(f"evaluate pred {name}", as_pred, expect, "bad"),
                  Case(f"evaluate ref {name}", as_ref, expect, "bad")]
    return cases


def _geometry_cases() -> list[Case]:
    variants = {
        "other_size": ("error", dict(array=_labels((6, 7, 9)))),
        "other_spacing": ("error", dict(spacing=(2.0, 2.0, 3.0))),
        "other_origin": ("error", dict(origin=(5.0, 0.0, 0.0))),
        "other_direction": ("error", dict(direction=(0, 1, 0, 1, 0, 0, 0, 0, 1))),
        "two_d": ("error", dict(array=_labels((7, 8)))),
        "one_voxel_thick": ("ok", dict(array=_labels((1, 7, 8)), both=True)),
        "single_voxel": ("ok", dict(array=_labels((1, 1, 1), values=(1,)), both=True)),
    }
    cases = []
    for name, (expect, spec) in variants.items():
        def build(folder, spec=spec, swap=False):
            base = spec.get("array") if spec.get("both") else _labels()
            good = _write(_image(base), folder / "good.nii.gz")
            odd = _image(spec.get("array", _labels()), spec.get("spacing", (2.0, 2.0, 2.0)),
                         spec.get("origin", (0.0, 0.0, 0.0)), spec.get("direction", (1, 0, 0, 0, 1, 0, 0, 0, 1)))
            bad = _write(odd, folder / "bad.nii.gz")
            return ["evaluate", "--pred", good if swap else bad, "--ref", bad if swap else good]

        cases += [Case(f"evaluate pred {name}", build, expect, "bad"),
                  Case(f"evaluate ref {name}", lambda f, b=build: b(f, swap=True), expect, "bad")]

    def four_d(folder, frames):
        arr = np.stack([_labels()] * frames, axis=-1)  # SimpleITK: 4D from a (z, y, x, t) array via JoinSeries
        img = sitk.JoinSeries([_image(arr[..., t]) for t in range(frames)])
        ref = _write(_image(_labels()), folder / "ref.nii.gz")
        return ["evaluate", "--pred", _write(img, folder / "bad.nii.gz"), "--ref", ref]

    def vector(folder):
        img = sitk.Compose([_image(_labels())] * 3)
        ref = _write(_image(_labels()), folder / "ref.nii.gz")
        return ["evaluate", "--pred", _write(img, folder / "bad.nrrd"), "--ref", ref]

    def huge(folder):
        path = folder / "bad.nrrd"
        path.write_bytes(b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 100000 100000 100000\n"
                         b"encoding: raw\n\n" + b"\0" * 64)
        ref = _write(_image(_labels()), folder / "ref.nii.gz")
        return ["evaluate", "--pred", str(path), "--ref", ref]

    cases += [Case("evaluate 4D one frame", lambda f: four_d(f, 1), "ok"),
              Case("evaluate 4D three frames", lambda f: four_d(f, 3), "error", "bad"),
              Case("evaluate vector image", vector, "error", "bad"),
              Case("evaluate huge declared size", huge, "error", "bad"),
              Case("evaluate same file twice", lambda f: ["evaluate", "--pred", _write(_image(_labels()), f / "a.nrrd"),
                                                          "--ref", str(f / "a.nrrd")], "ok"),
              Case("evaluate missing pred", lambda f: ["evaluate", "--pred", str(f / "nope.nii.gz"), "--ref",
                                                       _write(_image(_labels()), f / "r.nii.gz")], "error", "nope"),
              Case("evaluate directory without DICOM", lambda f: ["evaluate", "--pred", str(f), "--ref",
                                                                  _write(_image(_labels()), f / "r.nii.gz")],
                   "error", "no DICOM"),
              Case("evaluate path with spaces", lambda f: ["evaluate", "--pred",
                                                           _write(_image(_labels()), f / "a b.nii.gz"), "--ref",
                                                           _write(_image(_labels()), f / "c d.nii.gz")], "ok")]
    return cases


# -- segmentation inputs -------------------------------------------------------------------------

def _channel_cases() -> list[Case]:
    def channel(make: Callable[[Path], str]):
        return lambda folder: _segment(folder, *_channels(folder, {"T1c": make(folder)}))

    def arr(array, fmt=".nii.gz", **geometry):
        return channel(lambda folder: _write(_image(array, **geometry), folder / f"bad{fmt}"))

    brain = _brain()
    cases = [
        Case("segment all channels valid", lambda f: _segment(f, *_channels(f)), "ok"),
        Case("segment channels as nrrd", lambda f: _segment(f, *_channels(f, fmt=".nrrd")), "ok"),
        Case("segment channels as mha", lambda f: _segment(f, *_channels(f, fmt=".mha")), "ok"),
        Case("segment NaN voxels", arr(np.where(brain > 600, np.nan, brain).astype(np.float32), ".mha"), "error",
             "NaN"),
        Case("segment Inf voxels", arr(np.where(brain > 600, np.inf, brain).astype(np.float32), ".mha"), "error",
             "bad"),
        Case("segment constant image", arr(np.full(brain.shape, 100, np.float32)), "ok"),
        Case("segment all zeros", arr(np.zeros(brain.shape, np.float32)), "ok"),
        Case("segment huge values", arr(brain * 1e30), "ok"),
        Case("segment negative values", arr(-brain), "ok"),
        Case("segment 2D channel", arr(brain[10]), "error", "bad"),
        Case("segment grid differs but overlaps", arr(np.repeat(brain, 2, axis=0), spacing=(2.0, 2.0, 1.0)), "ok"),
        Case("segment other orientation", arr(brain.transpose(0, 2, 1),
                                              direction=(0, 1, 0, 1, 0, 0, 0, 0, 1)), "ok"),
        Case("segment disjoint channel", arr(brain, origin=(1000.0, 0.0, 0.0)), "error", "same physical space"),
        Case("segment 1-voxel-thick volume", lambda f: _segment(f, *[a for i, n in enumerate(CHANNELS) for a in (
            "--input", f"{n}={_write(_image(_brain()[10:11] * (1 + i)), f / f'{n}.nii.gz')}")]), "error",
            "1 along K: a single slice or a sliver, not a 3D volume"),
        Case("segment tiny 2x2x2 volume", lambda f: _segment(f, *[a for i, n in enumerate(CHANNELS) for a in (
            "--input", f"{n}={_write(_image(_brain((2, 2, 2)) * (1 + i)), f / f'{n}.nii.gz')}")]), "error",
            "2 x 2 x 2 voxels, 2 along I: a single slice or a sliver"),
        Case("segment 3-voxel-thick volume", lambda f: _segment(f, *[a for i, n in enumerate(CHANNELS) for a in (
            "--input", f"{n}={_write(_image(_brain()[10:13] * (1 + i)), f / f'{n}.nii.gz')}")]), "ok"),
        Case("segment one file for two channels", lambda f: _segment(f, *[a for n in CHANNELS for a in (
            "--input", f"{n}={_write(_image(_brain()), f / 'same.nii.gz')}")]), "error", "are the same image"),
    ]
    for dtype in (np.uint8, np.int8, np.uint16, np.int16, np.int32, np.uint32, np.int64, np.float64):
        info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
        scaled = brain if info is None else np.clip(brain / brain.max() * min(info.max, 1000), info.min, info.max)
        cases.append(Case(f"segment channel dtype {np.dtype(dtype).name}", arr(scaled.astype(dtype), ".nrrd"), "ok"))
    cases += [
        Case("segment missing channel", lambda f: _segment(f, *_channels(f)[:6]), "error", "needs input channel"),
        Case("segment unknown channel", lambda f: _segment(f, *_channels(f), "--input", f"PET={f / 'T1.nii.gz'}"),
             "error", "PET"),
        Case("segment duplicate channel", lambda f: _segment(f, *_channels(f), "--input", f"T1={f / 'T1.nii.gz'}"),
             "error", "given twice"),
        Case("segment input without NAME=", lambda f: _segment(f, "--input", str(f)), "error", "NAME=PATH"),
        Case("segment input with empty path", lambda f: _segment(f, "--input", "T1="), "error", "NAME=PATH"),
        Case("segment unknown device", lambda f: _segment(f, *_channels(f)) + ["--device", "tpu"], "error", "tpu"),
        Case("segment cuda without CUDA", lambda f: _segment(f, *_channels(f)) + ["--device", "cuda"], "error",
             "CUDA"),
        Case("segment reference other grid", lambda f: _segment(f, *_channels(f), "--reference",
                                                                 _write(_image(_labels()), f / "bad.nii.gz")),
             "error", "bad.nii.gz"),
        Case("segment reference non-integer", lambda f: _segment(f, *_channels(f), "--reference", _write(
            _image(_brain() / 7), f / "bad.nii.gz")), "error", "non-integer"),
        Case("segment reference missing", lambda f: _segment(f, *_channels(f), "--reference", str(f / "nope.nrrd")),
             "error", "nope.nrrd"),
        Case("segment reference valid", lambda f: _segment(f, *_channels(f), "--reference", _write(
            _image((_brain() > 700).astype(np.uint8) * 4), f / "ref.nii.gz")), "ok"),
    ]
    return cases


def _output_cases() -> list[Case]:
    def out_is_file(folder):
        (folder / "file.txt").write_text("x")
        return ["segment", "--model", "demo", "--device", "cpu", "--out", str(folder / "file.txt"), *_channels(folder)]

    def out_under_file(folder):
        (folder / "file.txt").write_text("x")
        return ["segment", "--model", "demo", "--device", "cpu", "--out", str(folder / "file.txt" / "sub"),
                *_channels(folder)]

    def out_rerun(folder):
        args = _segment(folder, *_channels(folder))
        (folder / "out" / "report.json").write_text("{}")  # an earlier result is replaced whole
        return args

    return [Case("output folder is a file", out_is_file, "error", "file.txt"),
            Case("output folder under a file", out_under_file, "error", "file.txt"),
            Case("output folder with earlier results", out_rerun, "ok")]


# -- models ----------------------------------------------------------------------------------------

def _model_copy(folder: Path, edit: Callable[[dict, Path], None] | None = None) -> str:
    target = folder / "model"
    shutil.copytree(DEMO, target)
    if edit:
        manifest = json.loads((target / "manifest.json").read_text())
        edit(manifest, target)
        (target / "manifest.json").write_text(json.dumps(manifest))
    return str(target)


def _model_cases() -> list[Case]:
    def with_model(make: Callable[[Path], str]):
        return lambda folder: _segment(folder, *_channels(folder), model=make(folder))

    def tamper(m, t):
        data = bytearray((t / "model.pt").read_bytes())
        data[-50] ^= 0xFF
        (t / "model.pt").write_bytes(bytes(data))

    def set_path(value):
        return lambda m, t: m["weights"].update(file=value)

    def bad_json(folder):
        target = _model_copy(folder)
        Path(target, "manifest.json").write_text("{ not json")
        return target

    def pickled(m, t):
        import torch

        torch.save({"x": _Pickled()}, t / "model.pt")
        from medcnncad.models.manifest import sha256_file

        m["weights"]["sha256"] = sha256_file(t / "model.pt")

    def bundle(folder, broken=False, no_weights=False):
        sys_path_helpers()
        from helpers import write_bundle

        b = write_bundle(folder / "bundle")
        if broken:
            (b / "configs" / "inference.json").write_text("{ broken")
        if no_weights:
            (b / "models" / "model.pt").unlink()
        return str(b)

    return [
        Case("model id unknown", with_model(lambda f: "no-such-model"), "error", "no such model"),
        Case("model folder without manifest", with_model(lambda f: str(f)), "error", "manifest not found"),
        Case("model manifest not JSON", with_model(bad_json), "error", "not valid JSON"),
        Case("model manifest schema violation", with_model(lambda f: _model_copy(
            f, lambda m, t: m.pop("labels"))), "error", "labels"),
        Case("model network outside MONAI", with_model(lambda f: _model_copy(
            f, lambda m, t: m["network"].update({"class": "os.system"}))), "error", "network/class"),
        Case("model kwargs do not fit", with_model(lambda f: _model_copy(
            f, lambda m, t: m["network"]["kwargs"].update(channels=[8, 16, 32, 64]))), "error", "do not fit"),
        Case("model weights tampered", with_model(lambda f: _model_copy(f, tamper)), "error", "does not match"),
        Case("model weights pickle payload", with_model(lambda f: _model_copy(f, pickled)), "error",
             "refused to load"),
        Case("model weights path traversal", with_model(lambda f: _model_copy(f, set_path("../../etc/passwd"))),
             "error", "escapes the model folder"),
        Case("model weights absolute path", with_model(lambda f: _model_copy(f, set_path("/etc/passwd"))),
             "error", "must be relative"),
        Case("model weights missing", with_model(lambda f: _model_copy(f, set_path("nothing.pt"))), "error",
             "weights file not found"),
        Case("bundle untrusted", with_model(bundle), "error", "--trust"),
        Case("bundle broken config", with_model(lambda f: bundle(f, broken=True)), "error", "cannot be parsed"),
    ]


class _Pickled:
    def __reduce__(self):
        return (print, ("pickle payload executed",))


def sys_path_helpers() -> None:
    import sys

    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)


def all_cases() -> list[Case]:
    """Every case of the corpus."""
    return (_reader_cases() + _label_value_cases() + _geometry_cases() + _channel_cases() + _output_cases()
            + _model_cases())
