"""The promotion gate's rules on manifests: a retrained candidate must beat the champion it was
evaluated against on held-out feedback by the margin, and lose at most the allowed points on
the test split; a version not retrained from feedback is judged on the test split alone."""
import pytest

from jaxmodels.serve.promotion_gate import GateRefused, PromotionGate


def retrained(champion: int, holdout: tuple, test: tuple) -> dict:
  """A manifest of a `jaxmodels retrain` run: (champion, candidate) accuracies."""
  return {'retrain': {'champion': champion, 'evaluation': {
      'holdout': {'examples': 300, 'champion_accuracy': holdout[0],
                  'candidate_accuracy': holdout[1]},
      'test': {'examples': 1000, 'champion_accuracy': test[0], 'candidate_accuracy': test[1]}}}}


def with_test_accuracy(accuracy: float) -> dict:
  return {'run': {'test': {'accuracy': accuracy}}}


GATE = PromotionGate(margin_points=2.0, max_test_drop_points=1.0)


def test_a_better_retrained_candidate_passes_with_its_numbers():
  evidence = GATE.check(2, retrained(1, (0.55, 0.80), (0.90, 0.895)), 1, with_test_accuracy(0.90))
  assert evidence['rule'] == 'retrained'
  assert evidence['holdout_accuracy'] == {'candidate': 80.0, 'champion': 55.0}
  assert evidence['holdout_gain_points'] == pytest.approx(25.0)
  assert evidence['test_drop_points'] == pytest.approx(0.5)


@pytest.mark.parametrize('holdout, test, why', [
    ((0.70, 0.71), (0.90, 0.90), 'not better than champion 1 on the 300 held-out feedback labels '
                                 'by 2 points: 71.00 % vs 70.00 %'),
    ((0.70, 0.60), (0.90, 0.90), '60.00 % vs 70.00 %'),  # Worse.
    ((0.50, 0.90), (0.90, 0.885), 'loses 1.50 points on the test split against champion 1 '
                                  '(88.50 % vs 90.00 %), more than the 1 allowed'),
])
def test_a_retrained_candidate_short_of_the_rule_is_refused_with_both_numbers(holdout, test,
                                                                              why):
  with pytest.raises(GateRefused) as refused:
    GATE.check(2, retrained(1, holdout, test), 1, with_test_accuracy(0.9))
  assert why in str(refused.value)
  assert '{"force": true}' in str(refused.value)
  assert refused.value.http_status == 409
  assert refused.value.evidence['holdout_accuracy']['champion'] == pytest.approx(100 * holdout[0])


def test_a_candidate_evaluated_against_another_champion_is_refused():
  with pytest.raises(GateRefused, match='evaluated against version 1, and the champion is now '
                                        'version 4'):
    GATE.check(5, retrained(1, (0.5, 0.9), (0.9, 0.9)), 4, with_test_accuracy(0.9))


def test_a_version_not_retrained_is_judged_on_the_test_split():
  assert GATE.check(2, with_test_accuracy(0.895), 1, with_test_accuracy(0.90))['test_drop_points'] == pytest.approx(0.5)
  with pytest.raises(GateRefused, match='loses 3.00 points'):
    GATE.check(2, with_test_accuracy(0.87), 1, with_test_accuracy(0.90))
  assert GATE.check(2, {}, 1, with_test_accuracy(0.9))['rule'] == 'no evidence'
  assert GATE.check(1, with_test_accuracy(0.1), 1, with_test_accuracy(0.1))['rule'] == 'no other champion'
  assert GATE.check(1, with_test_accuracy(0.1), None, None)['rule'] == 'no other champion'
