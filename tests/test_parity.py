"""The accuracy gate is a paired test: it fails on a real loss, not on a few flips among a few hundred samples."""
from __future__ import annotations

import numpy as np

from gee_deploy.parity import Outputs, Thresholds, checks, compare


def _outputs(right: np.ndarray, labels: np.ndarray) -> Outputs:
    """Logits whose arg-max is the label where ``right``, another class elsewhere."""
    predicted = np.where(right, labels, (labels + 1) % 10)
    logits = np.zeros((len(labels), 10), np.float32)
    logits[np.arange(len(labels)), predicted] = 1.0
    return Outputs(logits, np.ones((len(labels), 1), np.float32), labels)


def _accuracy_check(n: int, both: int, lost: int, gained: int, limit: float = 3e-3):
    labels = np.arange(n) % 10
    ref_right = np.zeros(n, bool)
    ref_right[:both + lost] = True
    right = np.zeros(n, bool)
    right[:both] = True
    right[both + lost:both + lost + gained] = True
    m = compare(_outputs(ref_right, labels), _outputs(right, labels))
    assert (m.accuracy_lost, m.accuracy_gained) == (lost, gained)
    assert np.isclose(m.accuracy_delta, (gained - lost) / n)
    (check,) = checks(m, Thresholds(max_accuracy_delta=limit), ("accuracy",))
    return check


def test_two_flips_in_256_samples_are_not_a_measured_loss():
    # 0.78 points on 256 samples, but two discordant samples cannot tell that from 0.3 points
    assert _accuracy_check(256, 200, 2, 0).ok


def test_a_one_point_loss_on_10000_samples_fails_with_its_paired_counts():
    c = _accuracy_check(10_000, 8_000, 150, 50)
    assert not c.ok and "150 lost, 50 gained of 10000" in c.message and "-1.000 points" in c.message


def test_a_collapsed_model_fails_even_on_few_samples():
    assert not _accuracy_check(256, 20, 180, 5).ok


def test_identical_predictions_pass_a_zero_limit():
    assert _accuracy_check(256, 200, 0, 0, limit=0.0).ok


def test_an_accuracy_delta_above_the_limit_is_within_noise_only_while_too_few_samples_show_it():
    """check's note: the paired gate passes 1 flip in 64 samples at a 0-point limit, and fails 10."""
    from gee_deploy.parity import Outputs, Thresholds, accuracy_within_noise, checks, compare

    labels = np.zeros(64, dtype=np.int64)
    right = np.tile([[1.0, 0.0]], (64, 1)).astype(np.float32)
    spikes = np.ones((64, 1), np.float32)
    limit = Thresholds(max_accuracy_delta=0.0)
    for flips, within in ((0, False), (1, True), (10, False)):
        wrong = right.copy()
        wrong[:flips] = [0.0, 1.0]
        m = compare(Outputs(right, spikes, labels), Outputs(wrong, spikes, labels))
        assert accuracy_within_noise(m, limit) is within, flips
        failed = [c for c in checks(m, limit, ("accuracy",)) if not c.ok]
        assert bool(failed) is (flips == 10), flips
