"""Shared fixtures: the engine is imported from the source tree, never from Slicer."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "MedCNNCAD"))

import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Keep the trusted-bundle list, user model folder and policy cache out of the real home, and run every
    model with its manifest's precision: the default (measured per machine) would calibrate in each test's
    fresh home and, on a CPU with native bf16, change numbers the tests compare. Tests of the default unset it.
    Processes a test starts (the Slicer worker, the command line) compute with one thread, as this one does
    (above): a result compared across processes then differs by nothing but the process (two threads sum in
    another order: measured 1.3e-6 on a probability)."""
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))
    monkeypatch.setenv("MEDCNNCAD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MEDCNNCAD_PRECISION", "manifest")


def make_image(array_kji: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
               direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> sitk.Image:
    image = sitk.GetImageFromArray(array_kji)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(v) for v in origin))
    image.SetDirection(tuple(float(v) for v in direction))
    return image


# Tests that take seconds to minutes each (measured with `pytest --durations` on the 2-core CI machine,
# 2026-12-03): `make test-quick` (-m "not slow") skips them; `make test` runs everything. Tests can also
# carry @pytest.mark.slow themselves.
SLOW = {
    ("test_bundle.py", "test_trusted_bundle_runs_and_matches_the_manifest_model"),  # 28 s
    ("test_lesion_filter.py", "test_fit_script_collects_your_own_cases"),  # 18 s
    ("test_app.py", "test_console_script_and_models_listing"),  # 9 s
    ("test_app.py", "test_untrusted_bundle_exit_2_then_trust_flag_runs"),  # 26 s
    ("test_cohort.py", "test_dask_local_cluster_equals_serial"),  # 33 s
    ("test_cohort.py", "test_serial_run_summary_resume_and_failures"),  # 12 s
    ("test_demo.py", "test_demo_writes_outputs_and_reaches_dice"),  # 15 s
    ("test_evaluate_phantoms.py", "test_a_set_of_normal_heads_counts_false_positives_without_dice"),  # 12 s
    ("test_evaluate_phantoms.py", "test_case_dice_equals_an_independent_run"),  # 10 s
    ("test_evaluate_phantoms.py", "test_summary_pools_its_cases"),  # 28 s
    ("test_evaluate_phantoms.py", "test_tta_reaches_the_segmenter"),  # 29 s
    ("test_interrupts.py", "test_signal_leaves_output_folder_as_it_was"),  # 15 s
    ("test_registry.py", "test_shipped_robust_model_reads_a_low_grade_core_in_the_case_own_contrast"),  # 20 s
    ("test_phantom.py", "test_classic_phantoms_are_unchanged_by_the_new_features"),  # 7 s
    ("test_phantom.py", "test_grade_shapes_appearance_but_not_size_alone"),  # 12 s
    ("test_phantom.py", "test_same_seed_same_case_and_labels_are_brats"),  # 22 s
    ("test_phantom.py", "test_tumor_free_cases_and_clinical_like_geometry"),  # 48 s
    ("test_module.py", "test_worker_run_matches_console_run_and_cancel_changes_nothing"),  # 29 s
    ("test_train_segmentation.py",
     "test_loader_workers_train_reproducibly_and_a_missing_gpu_fails_before_any_output"),  # 108 s
    ("test_train_segmentation.py", "test_train_writes_model_and_resumes"),  # 30 s
    ("test_train_classification.py", "test_train_classification_writes_a_calibrated_model_and_resumes"),  # 73 s
    ("test_worker.py", "test_crashed_worker_is_reported_and_next_run_works"),  # 9 s
    ("test_worker.py", "test_worker_reports_bad_input_and_lives_on"),  # 7 s
    ("test_worker.py", "test_worker_result_equals_in_process_and_model_stays_loaded"),  # 12 s
    ("test_module.py", "test_worker_knows_models_added_after_it_started"),  # 35 s
    ("test_module.py", "test_cancel_through_a_launcher_adds_nothing_and_the_next_run_works"),  # 31 s
    ("test_module.py", "test_background_is_the_first_non_empty_input_and_never_cleared"),  # 6 s
    ("test_module.py", "test_console_api_segment_and_compare"),  # 5 s
    ("test_module.py", "test_console_api_similar_cases"),  # 6 s
    ("test_module.py", "test_uncertainty_volume_is_never_thresholded_as_a_probability"),  # 3 s
    ("test_worker.py", "test_cancel_through_a_launcher_ends_the_real_worker_and_next_run_works"),  # 14 s
    ("test_worker.py", "test_cancelled_request_never_returns_its_result_even_if_it_already_arrived"),  # 13 s
    ("test_worker.py", "test_worker_runs_in_its_own_session"),  # 7 s
    ("test_app.py", "test_segment_writes_every_output"),  # 12 s
    ("test_app.py", "test_segment_with_lesion_classifier_and_uncertainty"),  # 2 s
    ("test_dependencies.py", "test_a_real_run_imports_nothing_else"),  # 11 s
    ("test_phantom.py", "test_sequence_contrast_is_characteristic"),  # 9 s
    ("test_registry.py", "test_shipped_robust_model_takes_any_subset_of_sequences"),  # 4 s
    ("test_policy.py", "test_gpu_check_script_refuses_cleanly_without_cuda"),  # 3 s
    ("test_policy.py", "test_bf16_loses_accuracy_on_the_demo_unet_so_the_gate_keeps_it_off"),  # 2 s
    ("test_train_segmentation.py", "test_fine_tuning_keeps_matching_layers_and_reports_the_rest"),  # 3 s
    ("test_dicom_seg.py", "test_cli_segment_from_dicom_with_dicom_seg"),  # 2 s
    ("test_chain.py", "test_chain_registers_a_moved_sequence_onto_the_first_and_refuses_another_patient"),  # 2 s
    ("test_html.py", "test_report_renders_with_its_images_in_headless_chromium"),  # 1.5 s
    ("test_html.py", "test_pdf"),  # 1 s
    ("test_dicom_sr.py", "test_the_sr_validates"),  # 13 s (its fixture segments a DICOM case)
    ("test_dicom_sr.py", "test_the_sr_reads_back_to_the_report_s_lesions_and_references_the_seg"),
    ("test_dicom_sr.py", "test_batch_writes_the_seg_and_sr_of_each_dicom_case"),  # 5 s
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if (item.path.name, item.originalname) in SLOW:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def scene():
    """A new real MRML scene from slicer-core (``slicer.mrmlScene``) with Slicer's module logics (Slicer-module
    tests; skipped without slicer-core)."""
    pytest.importorskip("slicer")
    from slicer_scene import new_scene

    return new_scene()


@pytest.fixture(scope="module")
def demo_result():
    """(images, reference label image, SegmentationResult) of brats-demo-unet on the small phantom, on the CPU;
    computed once per test file."""
    from helpers import small_phantom

    from medcnncad.inference.segmenter import Segmenter
    from medcnncad.models.registry import load_model

    images, label = small_phantom()
    return images, label, Segmenter(load_model("brats-demo-unet"), "cpu").run(images)
