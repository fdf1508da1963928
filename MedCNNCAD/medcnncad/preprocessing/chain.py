"""The clinical preprocessing chain a manifest asks for (``clinical_preprocessing``), run by the engine on
every case before the model's own ``preprocessing`` (CLI, Python, Slicer and cohorts alike).

Steps, in order, each timed and reported (:class:`StepReport`):

1. ``background``: a constant non-zero background becomes 0 (:mod:`.background`).
2. ``registration``: each sequence whose grid differs from the first given sequence's is rigidly
   registered onto it (Mattes mutual information from the scanner coordinates; where that lowers the quality
   figure or ends below its floor, the correlation of gradient magnitudes (floor 0.5) and a start from the
   centres of mass compete: :func:`register_sequence`, :mod:`.registration`) and resampled onto its grid;
   sequences already on that grid (up to :func:`~medcnncad.io.images.same_space`'s tolerance) take its geometry,
   their voxels as they are ("grids match"). Registrations of several sequences, and the tries
   after a weak first one, run side by side on the cores (each on one ITK thread and on its own copies of the images
   it hands ITK: the same transforms as one at a time). A registration whose quality
   (gradient-magnitude correlation inside the head) stays below ``min_registration_quality`` is an
   error naming the sequence: the sequences may come from different patients.
3. ``brain_mask``: deepbet brain extraction (:mod:`.brain_mask`) from the best sequence given (or the
   one the reader chose, or the reader's own mask: :class:`~.brain_mask.BrainMaskChoice`), applied
   to every sequence. ``auto`` runs it only when the head's foreground is larger than
   ``skull_stripped_max_ml`` (a skull-stripped brain is 1.1-1.7 L; a head with its skull 3-5 L). With
   ``results_inside_mask`` the segmenter later sets labels and probabilities outside the mask to
   background (:func:`medcnncad.inference.postprocess.restrict_to_mask`).
4. ``bias_correction``: N4 inside the brain mask (optional).

Everything ends on the first given sequence's grid: the user's reference volume. Images are
SimpleITK images (LPS, mm); arrays (K, J, I).
"""

from __future__ import annotations

import os
import queue
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import numpy as np
import SimpleITK as sitk

from medcnncad.errors import InputError
from medcnncad.io.images import same_space
from medcnncad.models.manifest import ClinicalPreprocessing, extracts_brain
from medcnncad.preprocessing.background import zero_constant_background
from medcnncad.preprocessing.bias import n4_correct
from medcnncad.preprocessing.brain_mask import (
    BrainMaskChoice,
    apply_mask,
    extract_brain,
    given_mask,
    mask_volume_ml,
    pick_source,
)
from medcnncad.preprocessing.registration import (
    FixedImage,
    Registration,
    RegistrationPair,
    failure_text,
    foreground_mask,
    itk_failure,
    register_rigid,
    resample_to,
)

__all__ = ["StepReport", "PreparedCase", "prepare_case", "check_choice", "check_model_takes_choice",
           "head_volume_ml", "register_sequence", "registration_workers", "thread_budget", "THREAD_BUDGET"]

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class StepReport:
    """One step of the chain: its name, seconds, what it did (JSON-ready) and whether it changed the case."""

    name: str
    seconds: float
    applied: bool
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"step": self.name, "seconds": round(self.seconds, 3), "applied": self.applied, **self.detail}


@dataclass
class PreparedCase:
    """The chain's output: the sequences on the first one's grid, the brain mask (uint8, same grid) when
    one was computed, the step reports and warnings for the reader."""

    images: dict[str, sitk.Image]
    brain_mask: sitk.Image | None
    steps: list[StepReport]
    warnings: list[str]


def head_volume_ml(image: sitk.Image) -> float:
    """Volume (mL) of the head's foreground: Otsu threshold, largest component, holes filled; on a grid
    twice as coarse along axes finer than 1.25 mm (SimpleITK BinShrink: the mean of each block of 2 voxels
    per such axis; 8x fewer voxels on a 1 mm head, the volume within 1 % of the full grid's, tested)."""
    factors = [2 if s <= 1.25 else 1 for s in image.GetSpacing()]
    if max(factors) > 1:
        image = sitk.BinShrink(sitk.Cast(image, sitk.sitkFloat32), factors)
    return mask_volume_ml(foreground_mask(image))


def _background(images: dict[str, sitk.Image]) -> StepReport:
    start, found = time.perf_counter(), {}
    for name, image in images.items():
        images[name], value, share = zero_constant_background(image)
        if value is not None and value != 0.0:
            found[name] = {"value": value, "share": round(share, 4)}
    return StepReport("background", time.perf_counter() - start, bool(found), {"zeroed": found})


QUALITY_DROP = 0.05
"""A registration whose quality figure ends this far below where it started has gone the wrong way."""
REGISTRATION_TRIES: tuple[tuple[str, str], ...] = (("identity", "gradient-correlation"), ("moments", "mattes"))
"""After the first try (mutual information from the scanner coordinates): what else is tried when it fails."""
GRADIENT_TRY_MIN_QUALITY = 0.5
"""The quality floor of a registration that maximised the quality figure itself (gradient-magnitude correlation):
optimised for it, images of different patients reached 0.23-0.44 (three pairs of the real cases, measured
2026-12-04); a held-out patient's own 5 mm T2 reached 0.80. Lightly supported, like the 0.25 floor."""


def register_sequence(fixed: sitk.Image, moving: sitk.Image, min_quality: float, workers: int | None = None,
                      reference: FixedImage | None = None) -> tuple[Registration, str]:
    """Rigidly register one sequence onto the reference sequence: the registration and how it was found.

    First Mattes mutual information from the scanner coordinates (series of one session are nearly aligned).
    When its quality figure (gradient-magnitude correlation inside the head) ends below ``min_quality`` or more
    than :data:`QUALITY_DROP` below where it started, that try is out, the tries of :data:`REGISTRATION_TRIES`
    run, and the best quality figure among those that reach their floor wins; when it passes but ends below
    :data:`GRADIENT_TRY_MIN_QUALITY`, those tries run too and it competes with them (``min_quality``; for the try that
    maximises the figure itself, at least :data:`GRADIENT_TRY_MIN_QUALITY`). None reaching it is a refusal:
    better than a registration that went the wrong way. (The scanner coordinates themselves do not compete:
    BraTS-space images of different patients score 0.36 unmoved.) Mutual information is misled by some
    thick-slice sequences (measured on a held-out patient's T2 re-sampled at 5 mm: from a perfect start it moved
    25 mm away), which the correlation of gradient magnitudes is not.

    The other tries run side by side on up to ``workers`` cores (default :func:`registration_workers`). Each runs
    its metric on one ITK thread with its own seeded samples, so the result does not depend on how many run at once;
    a try beside another hands ITK its own deep copies of the pair's images (:meth:`RegistrationPair.for_try`).
    ``reference``: ``FixedImage(fixed)`` already made (sequences registered onto one reference share it).

    Raises:
        InputError: when no try reaches its floor (naming the first try's figures).
    """
    errors: list[str] = []
    try:
        pair = RegistrationPair(reference or fixed, moving)  # mask, edges, figures before: once for every try
    except RuntimeError as exc:
        raise itk_failure(exc) from None

    def attempt(start: str, metric: str, own: RegistrationPair) -> Registration | None:  # failing: a failed try
        try:
            return register_rigid(fixed, moving, initialiser=start, metric=metric, min_gradient_correlation=-2.0,
                                  pair=own)
        except InputError as exc:
            errors.append(str(exc))
            return None

    first = attempt("identity", "mattes", pair)
    first_passes = first is not None and first.gradient_correlation_after >= max(
        min_quality, first.gradient_correlation_before - QUALITY_DROP)
    if first is not None and first_passes and first.gradient_correlation_after >= GRADIENT_TRY_MIN_QUALITY:
        return first, "mutual information from the scanner coordinates"
    # the first try is out (it went the wrong way or ended too low) or weak (below the gradient try's floor: on a
    # thick-slice T2 moved 9 mm it ended at 0.36, 4-5 mm off, where the gradient try reached 0.84, 0.6 mm off):
    # the other tries run, and a weak first try competes with them
    tries: list[tuple[Registration | None, str, float]] = (
        [(first, "mutual information from the scanner coordinates", min_quality)] if first_passes else [])
    width = _width(len(REGISTRATION_TRIES), workers)
    # a try beside others hands ITK its own images: every try but the first gets a copy, made here before any starts
    own = [pair if n == 0 or width == 1 else pair.for_try(metric, start)
           for n, (start, metric) in enumerate(REGISTRATION_TRIES)]
    found = _side_by_side([partial(attempt, start, metric, mine)
                           for (start, metric), mine in zip(REGISTRATION_TRIES, own)], width)
    for (start, metric), reg in zip(REGISTRATION_TRIES, found):
        edges = metric == "gradient-correlation"
        how = ("gradient-magnitude correlation" if edges else "mutual information") + \
            (" from the scanner coordinates" if start == "identity" else " from the centres of mass")
        floor = max(min_quality, GRADIENT_TRY_MIN_QUALITY) if edges else min_quality
        tries.append((reg, how, floor))
    done = [(reg, how, floor) for reg, how, floor in tries if reg is not None]
    passing = [(reg, how) for reg, how, floor in done if reg.gradient_correlation_after >= floor]
    if passing:
        return max(passing, key=lambda t: t[0].gradient_correlation_after)
    if first is not None and first.gradient_correlation_after >= min_quality:
        raise InputError(f"rigid registration failed: mutual information lowered the gradient-magnitude correlation "
                         f"from {first.gradient_correlation_before:.3f} to {first.gradient_correlation_after:.3f} "
                         f"(it went the wrong way) and no other try reached its floor")
    if first is not None:
        raise InputError(failure_text(first, min_quality))
    if done:  # the try that came closest to its floor says why
        reg, _, floor = max(done, key=lambda t: t[0].gradient_correlation_after - t[2])
        raise InputError(failure_text(reg, floor))
    raise InputError(errors[0] if errors else "rigid registration failed")


def _fixed_side(fixed: sitk.Image) -> FixedImage:
    """:class:`FixedImage` of the reference sequence (an ITK failure, e.g. an image too small to filter, as an
    InputError)."""
    try:
        return FixedImage(fixed)
    except RuntimeError as exc:
        raise itk_failure(exc) from None


THREAD_BUDGET = "OMP_NUM_THREADS"
"""The environment variable that gives a process its thread budget: Dask's nanny sets it to 1 in every worker process
(``distributed.nanny.pre-spawn-environ``), so each of ``medcnncad batch --workers N``'s N processes, one case at a time
each (``threads_per_worker=1``), registers on one thread instead of one per core of the machine; batch schedulers and
users set it too, and torch's own thread count follows it."""


def registration_workers() -> int:
    """How many registrations may run side by side (each on one ITK thread): the cores this process may use, and no
    more than its thread budget where :data:`THREAD_BUDGET` sets one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    budget = thread_budget(os.environ.get(THREAD_BUDGET))
    return min(cores, budget) if budget is not None else cores


def thread_budget(value: str | None) -> int | None:
    """The thread count an ``OMP_NUM_THREADS`` value sets (a list such as ``4,2`` gives one per nesting level: the
    first, outermost, counts); None where it sets none (unset, empty, not a positive whole number)."""
    first = (value or "").split(",")[0].strip()
    return int(first) if first.isascii() and first.isdecimal() and int(first) > 0 else None


def _width(jobs: int, workers: int | None) -> int:
    """How many of ``jobs`` run side by side on up to ``workers`` threads (default :func:`registration_workers`)."""
    return min(jobs, max(1, workers if workers is not None else registration_workers()))


def _side_by_side(jobs: Sequence[Callable[[], T]], workers: int | None) -> list[T]:
    """Each job's result, in job order, run on up to ``workers`` threads (default :func:`registration_workers`);
    the first error raised, in job order, is raised once every job has ended."""
    count = _width(len(jobs), workers)
    if count <= 1:
        return [job() for job in jobs]
    with ThreadPoolExecutor(max_workers=count, thread_name_prefix="medcnncad-registration") as pool:
        futures = [pool.submit(job) for job in jobs]
        wait(futures)
    return [future.result() for future in futures]


def _with_own_copy(jobs: Sequence[Callable[[R], T]], shared: R, copy: Callable[[R], R],
                   workers: int | None) -> list[T]:
    """:func:`_side_by_side` for jobs that each need an object that no job running beside them holds: ``shared`` and,
    for each further job that may run at once, a ``copy`` of it, all made here before any job starts; a job takes
    one that no running job holds and gives it back when it ends (the copies are alike: which one a job takes does
    not change its result)."""
    width = _width(len(jobs), workers)
    free: queue.SimpleQueue[R] = queue.SimpleQueue()
    for n in range(width):
        free.put(shared if n == 0 else copy(shared))

    def run(job: Callable[[R], T]) -> T:
        mine = free.get_nowait()  # never empty: at most ``width`` jobs run at once
        try:
            return job(mine)
        finally:
            free.put(mine)

    return _side_by_side([partial(run, job) for job in jobs], width)


def _with_geometry_of(reference: sitk.Image, image: sitk.Image) -> sitk.Image:
    """``image`` with ``reference``'s origin, spacing and direction: itself when it has them, else a copy (its
    voxels as they are)."""
    geometry = lambda i: (i.GetOrigin(), i.GetSpacing(), i.GetDirection())  # noqa: E731
    if geometry(image) == geometry(reference):
        return image
    copy = sitk.Image(image)
    copy.CopyInformation(reference)
    return copy


def _registration(images: dict[str, sitk.Image], spec: ClinicalPreprocessing, workers: int | None = None) -> StepReport:
    """Each sequence off the first one's grid registered onto it (side by side, :func:`_side_by_side`)."""
    start = time.perf_counter()
    names = list(images)
    fixed = images[names[0]]
    done: dict[str, Any] = {name: "grids match" for name in names[1:] if same_space(fixed, images[name])}
    for name in done:  # up to same_space's tolerance: ITK's filters, later, compare at a tighter one
        images[name] = _with_geometry_of(fixed, images[name])
    moved = [name for name in names[1:] if name not in done]
    # the tries of one sequence share the cores with the other sequences' registrations
    inner = max(1, (workers if workers is not None else registration_workers()) // max(1, len(moved)))

    def one(name: str, reference: FixedImage) -> tuple[Registration, str]:
        try:
            return register_sequence(fixed, images[name], spec.min_registration_quality, inner, reference)
        except InputError as exc:
            raise InputError(f"input {name} onto {names[0]}: {exc}") from None

    # the fixed mask and edges: made once for every sequence; a sequence beside others holds its own copy of them
    found = _with_own_copy([partial(one, name) for name in moved], _fixed_side(fixed), FixedImage.copy,
                           workers) if moved else []
    for name, (reg, how) in zip(moved, found):
        images[name] = resample_to(images[name], fixed, reg.transform)
        done[name] = {"rotation_deg": round(reg.rotation_deg, 3), "translation_mm": round(reg.translation_mm, 3),
                      "quality_before": round(reg.gradient_correlation_before, 3),
                      "quality_after": round(reg.gradient_correlation_after, 3),
                      "nmi_before": round(reg.nmi_before, 4), "nmi_after": round(reg.nmi_after, 4),
                      "method": how, "seconds": round(reg.seconds, 2)}
    done = {name: done[name] for name in names[1:]}  # in input order, as the report always listed them
    applied = any(isinstance(v, dict) for v in done.values())
    return StepReport("registration", time.perf_counter() - start, applied,
                      {"onto": names[0], "sequences": done,
                       "quality": "gradient-magnitude correlation inside the head (-1 to 1), before and after"})


def _brain_mask(images: dict[str, sitk.Image], spec: ClinicalPreprocessing, use_gpu: bool,
                choice: BrainMaskChoice | None = None,
                given: sitk.Image | None = None) -> tuple[StepReport, sitk.Image | None]:
    """The brain-mask step: the reader's own mask when ``choice`` gives one (``given``: it as :func:`check_choice`
    checked it), else deepbet on ``choice``'s sequence or the model's rule's (:func:`pick_source`), when the head is
    not already skull-stripped."""
    start = time.perf_counter()
    if choice is not None and choice.image is not None:
        assert given is not None  # prepare_case checked it
        detail: dict[str, Any] = {"mode": "given", "source": choice.name, "method": "given by the reader"}
        return _masked(images, given, start, detail)
    source = choice.source if choice is not None and choice.source else pick_source(list(images))
    detail = {"mode": spec.brain_mask, "source": source,
              "source_chosen_by": "the reader" if choice is not None and choice.source else "the model's rule"}
    if spec.brain_mask == "auto":
        head = head_volume_ml(images[source])
        detail.update(head_ml=round(head, 1), skull_stripped_max_ml=spec.skull_stripped_max_ml)
        if head <= spec.skull_stripped_max_ml:
            detail["reason"] = "already skull-stripped (head foreground within the limit)"
            return StepReport("brain_mask", time.perf_counter() - start, False, detail), None
    mask = extract_brain(images[source], f"input {source}", spec.mask_dilate_voxels, use_gpu)
    detail["method"] = "deepbet 1.0 (TorchScript)"
    return _masked(images, mask, start, detail)


def _masked(images: dict[str, sitk.Image], mask: sitk.Image, start: float,
            detail: dict[str, Any]) -> tuple[StepReport, sitk.Image]:
    """Every sequence set to 0 outside ``mask``; the step's report (with the mask's volume) and the mask."""
    for name in images:
        images[name] = apply_mask(images[name], mask)
    detail["brain_ml"] = round(mask_volume_ml(mask), 1)
    return StepReport("brain_mask", time.perf_counter() - start, True, detail), mask


def check_model_takes_choice(spec: ClinicalPreprocessing | None, wanted: bool, model: str = "the model") -> None:
    """Refuse a brain-mask choice (``wanted``: the reader makes one) for a model whose clinical preprocessing
    extracts no brain (``spec`` None or its ``brain_mask`` "never"), naming ``model``; no choice passes. Cheap: call it
    before reading the reader's mask."""
    if wanted and not extracts_brain(spec):
        raise InputError(f"{model} extracts no brain (its manifest's clinical_preprocessing.brain_mask is "
                         f"{'absent' if spec is None else 'never'}): a brain mask or its sequence cannot be chosen")


def check_choice(images: Mapping[str, sitk.Image], spec: ClinicalPreprocessing | None,
                 choice: BrainMaskChoice | None, model: str = "the model") -> sitk.Image | None:
    """Refuse a reader's brain-mask choice the case cannot take, before any work: a model whose chain
    extracts no brain, a sequence that was not given, a mask not on the first given sequence's grid.

    Returns:
        The reader's own mask as :func:`~.brain_mask.given_mask` makes it (uint8, the first sequence's grid), when
        ``choice`` gives one; else None.

    Raises:
        InputError: naming the model, the sequence or the mask.
    """
    if choice is None or choice.empty:
        return None
    check_model_takes_choice(spec, True, model)
    if choice.source is not None and choice.source not in images:
        raise InputError(f"brain mask from {choice.source}: not one of the given sequences ({', '.join(images)})")
    if choice.image is None:
        return None
    reference = next(iter(images))
    return given_mask(choice, images[reference], reference)


def _bias(images: dict[str, sitk.Image], mask: sitk.Image | None) -> StepReport:
    start = time.perf_counter()
    fields = {}
    for name, image in images.items():
        result = n4_correct(image, mask)
        field_array = sitk.GetArrayViewFromImage(result.bias_field)
        inside = sitk.GetArrayViewFromImage(mask) > 0 if mask is not None else slice(None)
        fields[name] = {"field_min": round(float(np.min(field_array[inside])), 4),
                        "field_max": round(float(np.max(field_array[inside])), 4)}
        images[name] = result.image if mask is None else apply_mask(result.image, mask)
    return StepReport("bias_correction", time.perf_counter() - start, True, {"n4": fields})


def prepare_case(images: Mapping[str, sitk.Image], spec: ClinicalPreprocessing, use_gpu: bool = False,
                 choice: BrainMaskChoice | None = None) -> PreparedCase:
    """Run the chain on the given sequences (manifest order; the first is the reference grid).

    Args:
        images: sequence name -> image as read, each on its own grid.
        spec: the manifest's ``clinical_preprocessing``.
        use_gpu: run brain extraction on CUDA.
        choice: the reader's brain mask, or the sequence to extract it from, for this case (None: the
            model's rule; checked before any step: :func:`check_choice`).

    Returns:
        The :class:`PreparedCase` (every image on the first one's grid).

    Raises:
        InputError: a registration that fails its quality check, a brain mask that is empty or
            covers the whole volume, deepbet missing when brain extraction is asked for, a brain-mask
            choice the case cannot take.
    """
    given = check_choice(images, spec, choice)
    work = dict(images)
    steps, mask = [], None
    if spec.background == "zero_constant":
        steps.append(_background(work))
    if spec.registration == "rigid":
        steps.append(_registration(work, spec))
    if spec.brain_mask != "never":
        step, mask = _brain_mask(work, spec, use_gpu, choice, given)
        steps.append(step)
    if spec.bias_correction:
        steps.append(_bias(work, mask))
    first = next(iter(work.values()))
    for name, image in work.items():  # registration "none": the old rule, scanner coordinates as they are
        if not same_space(first, image):
            work[name] = resample_to(image, first)
    return PreparedCase(work, mask, steps, [note for s in steps for note in (_notes(s) if s.applied else _unheeded(s))])


BRAIN_ML = (600.0, 2200.0)
"""A given brain mask outside this volume (mL) gets a note: skull-stripped adult brains measured 1.06-1.44 L in the
BraTS data here (docs/models.md), 2.2 L is the chain's own limit for a skull-stripped head; a partial field of view or
a child's brain may hold less, so it is a note, not a refusal."""
T1_WEIGHTED = ("T1", "T1c")
"""The sequences of deepbet's training domain (it was trained on T1-weighted MRIs)."""
OFF_DOMAIN_NOTE = ("clinical preprocessing: deepbet was trained on T1-weighted scans and read another sequence here: "
                   "check that the brain mask leaves out the eyes and sinuses; if not, run again with the mask from a "
                   "T1-weighted sequence (--brain-mask-from T1c; Slicer: brainMaskFrom) or with the mask corrected "
                   "(--brain-mask FILE; Slicer: the Brain mask selector)")
"""What a reader is told when deepbet read a T2 or FLAIR: on the one skull-on clinical scan here its T2 SPACE mask
took in an orbit (docs/models.md, "A reader's brain mask")."""


def _unheeded(step: StepReport) -> list[str]:
    """What a reader who named the sequence deepbet reads is told when the step read none (the model's auto rule saw
    a skull-stripped head); nothing for another step, or for the model's own choice of sequence."""
    d = step.detail
    if step.name != "brain_mask" or d.get("source_chosen_by") != "the reader":
        return []
    return [f"clinical preprocessing: no brain extracted from {d['source']} (your choice): the head is already "
            f"skull-stripped ({d['head_ml']:.0f} mL of foreground, the model extracts the brain above "
            f"{d['skull_stripped_max_ml']:.0f} mL); to bound the run, give a brain mask of your own "
            f"(--brain-mask FILE; Slicer: the Brain mask selector)"]


def _notes(step: StepReport) -> list[str]:
    """What a reader should know about a step that changed the case (report warnings, Slicer notes)."""
    d = step.detail
    if step.name == "background":
        return [f"clinical preprocessing: the constant background ({v['value']:.3g}, {v['share']:.0%} of the volume) "
                f"of {name} was set to 0" for name, v in d["zeroed"].items()]
    if step.name == "registration":
        return [f"clinical preprocessing: {name} registered onto {d['onto']} (rigid, {v['rotation_deg']:.2f} deg, "
                f"{v['translation_mm']:.2f} mm; quality {v['quality_before']:.2f} -> {v['quality_after']:.2f})"
                for name, v in d["sequences"].items() if isinstance(v, dict)]
    if step.name == "brain_mask" and d["mode"] == "given":
        given = [f"clinical preprocessing: the brain mask was given ({d['source']}, {d['brain_ml']:.0f} mL); "
                 f"everything outside it was set to 0 (brain_mask.nii.gz / the 'brain' segment shows it)"]
        low, high = BRAIN_ML
        return given + ([] if low <= d["brain_ml"] <= high else [
            f"clinical preprocessing: the given brain mask holds {d['brain_ml']:.0f} mL, where an adult brain holds "
            f"{low / 1000:.1f} to {high / 1000:.1f} L: is it the brain mask of this case (not a tumor segmentation, "
            "nor a partial one)? Nothing outside it was segmented"])
    if step.name == "brain_mask":
        extracted = [f"clinical preprocessing: brain extracted from {d['source']} ({d['brain_ml']:.0f} mL, deepbet); "
                     f"everything outside the mask was set to 0 (brain_mask.nii.gz / the 'brain' segment shows it)"]
        return extracted + ([OFF_DOMAIN_NOTE] if d["source"] not in T1_WEIGHTED else [])
    return ["clinical preprocessing: N4 bias-field correction applied"]
