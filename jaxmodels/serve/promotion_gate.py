"""The promotion gate: a version becomes the champion only when the evidence says it is better.

A candidate made by `jaxmodels retrain` carries its evaluation in its manifest ('retrain':
accuracies of it and of the champion it started from, on feedback held out of its training
and on the original test split). It passes when it beats that champion on the held-out
feedback by at least `margin_points` and loses at most `max_test_drop_points` on the test
split. A version that was not retrained from feedback has no held-out evidence: it is judged
on the test split alone (the test accuracy each manifest records). A refusal is a 409 that
gives both numbers; `{"force": true}` overrides it, and the override is recorded with them.
"""
import dataclasses

from jaxmodels.serve.model_repository import StateConflict


class GateRefused(StateConflict):
  """A promotion the evidence does not support; `evidence` holds the numbers."""

  def __init__(self, message: str, evidence: dict):
    super().__init__(message + ': promote with {"force": true} to override (it is recorded)',
                     key='version')
    self.evidence = evidence


def _points(value) -> float:
  return round(100 * float(value), 4)


@dataclasses.dataclass(frozen=True)
class PromotionGate:
  """margin_points: how much better (accuracy points on held-out feedback) a retrained
  candidate must be; max_test_drop_points: how much worse on the original test split it may
  be."""
  margin_points: float = 1.0
  max_test_drop_points: float = 1.0

  def check(self, candidate: int, candidate_manifest: dict, champion: int | None,
            champion_manifest: dict | None) -> dict:
    """The evidence for promoting `candidate` over `champion` (a dict of the rule and the
    numbers); raises GateRefused when it does not pass."""
    if champion is None or champion == candidate:
      return {'rule': 'no other champion'}
    retrain = candidate_manifest.get('retrain')
    if retrain:
      return self._check_retrained(candidate, retrain, champion)
    return self._check_test_only(candidate, candidate_manifest, champion, champion_manifest)

  def _check_retrained(self, candidate: int, retrain: dict, champion: int) -> dict:
    if retrain.get('champion') != champion:
      raise GateRefused(f'version {candidate} was evaluated against version '
                        f'{retrain.get("champion")}, and the champion is now version {champion}:'
                        ' retrain from the champion', {'rule': 'retrained',
                                                       'evaluated_against': retrain.get('champion')})
    holdout, test = retrain['evaluation']['holdout'], retrain['evaluation']['test']
    evidence = {
        'rule': 'retrained', 'holdout_examples': holdout['examples'],
        'holdout_accuracy': {'candidate': _points(holdout['candidate_accuracy']),
                             'champion': _points(holdout['champion_accuracy'])},
        'test_examples': test['examples'],
        'test_accuracy': {'candidate': _points(test['candidate_accuracy']),
                          'champion': _points(test['champion_accuracy'])},
        'margin_points': self.margin_points, 'max_test_drop_points': self.max_test_drop_points}
    gain = evidence['holdout_accuracy']['candidate'] - evidence['holdout_accuracy']['champion']
    drop = evidence['test_accuracy']['champion'] - evidence['test_accuracy']['candidate']
    evidence.update(holdout_gain_points=round(gain, 4), test_drop_points=round(drop, 4))
    if gain < self.margin_points:
      raise GateRefused(
          f'version {candidate} is not better than champion {champion} on the '
          f'{holdout["examples"]} held-out feedback labels by {self.margin_points:g} points: '
          f'{evidence["holdout_accuracy"]["candidate"]:.2f} % vs '
          f'{evidence["holdout_accuracy"]["champion"]:.2f} %', evidence)
    self._check_drop(candidate, champion, evidence, drop)
    return evidence

  def _check_test_only(self, candidate: int, candidate_manifest: dict, champion: int,
                       champion_manifest: dict | None) -> dict:
    accuracy = lambda manifest: ((manifest or {}).get('run') or {}).get('test', {}).get(
        'accuracy')
    if accuracy(candidate_manifest) is None or accuracy(champion_manifest) is None:
      return {'rule': 'no evidence', 'note': 'a manifest records no test accuracy'}
    evidence = {'rule': 'test split only (not retrained from feedback)',
                'test_accuracy': {'candidate': _points(accuracy(candidate_manifest)),
                                  'champion': _points(accuracy(champion_manifest))},
                'max_test_drop_points': self.max_test_drop_points}
    drop = evidence['test_accuracy']['champion'] - evidence['test_accuracy']['candidate']
    evidence['test_drop_points'] = round(drop, 4)
    self._check_drop(candidate, champion, evidence, drop)
    return evidence

  def _check_drop(self, candidate: int, champion: int, evidence: dict, drop: float) -> None:
    if drop > self.max_test_drop_points:
      raise GateRefused(
          f'version {candidate} loses {drop:.2f} points on the test split against champion '
          f'{champion} ({evidence["test_accuracy"]["candidate"]:.2f} % vs '
          f'{evidence["test_accuracy"]["champion"]:.2f} %), more than the '
          f'{self.max_test_drop_points:g} allowed', evidence)
