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
    """Keep the trusted-bundle list and user model folder out of the real home."""
    monkeypatch.setenv("MEDCNNCAD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


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
    ("test_candidates.py", "test_fit_script_collects_your_own_cases"),  # 18 s
    ("test_cli.py", "test_console_script_and_models_listing"),  # 9 s
    ("test_cli.py", "test_untrusted_bundle_exit_2_then_trust_flag_runs"),  # 26 s
    ("test_cohort.py", "test_dask_local_cluster_equals_serial"),  # 33 s
    ("test_cohort.py", "test_serial_run_summary_resume_and_failures"),  # 12 s
    ("test_demo.py", "test_demo_writes_outputs_and_reaches_dice"),  # 15 s
    ("test_evaluation.py", "test_a_set_of_normal_heads_counts_false_positives_without_dice"),  # 12 s
    ("test_evaluation.py", "test_case_dice_equals_an_independent_run"),  # 10 s
    ("test_evaluation.py", "test_summary_pools_its_cases"),  # 28 s
    ("test_evaluation.py", "test_tta_reaches_the_segmenter"),  # 29 s
    ("test_interrupts.py", "test_signal_leaves_output_folder_as_it_was"),  # 15 s
    ("test_models.py", "test_shipped_robust_model_reads_a_low_grade_core_in_the_case_own_contrast"),  # 20 s
    ("test_phantom.py", "test_classic_phantoms_are_unchanged_by_the_new_features"),  # 7 s
    ("test_phantom.py", "test_grade_shapes_appearance_but_not_size_alone"),  # 12 s
    ("test_phantom.py", "test_same_seed_same_case_and_labels_are_brats"),  # 22 s
    ("test_phantom.py", "test_tumor_free_cases_and_clinical_like_geometry"),  # 48 s
    ("test_slicer_module.py", "test_worker_run_matches_console_run_and_cancel_changes_nothing"),  # 29 s
    ("test_train.py", "test_loader_workers_train_reproducibly_and_a_missing_gpu_fails_before_any_output"),  # 108 s
    ("test_train.py", "test_train_writes_model_and_resumes"),  # 30 s
    ("test_train_classifier.py", "test_train_classification_writes_a_calibrated_model_and_resumes"),  # 73 s
    ("test_worker.py", "test_crashed_worker_is_reported_and_next_run_works"),  # 9 s
    ("test_worker.py", "test_worker_reports_bad_input_and_lives_on"),  # 7 s
    ("test_worker.py", "test_worker_result_equals_in_process_and_model_stays_loaded"),  # 12 s
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if (item.path.name, item.originalname) in SLOW:
            item.add_marker(pytest.mark.slow)
