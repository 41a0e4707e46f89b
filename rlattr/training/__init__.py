"""Layer 3: training: AttributedPPO, IIF, record hooks and the TensorBoard writer.

Imports the record and scoring layers, never analysis.

What an iteration did comes back as an ``IterationResult``, delivered to every callback of
``learn`` that has ``on_iteration(result)``; ``IterationResults`` collects them for code
outside callbacks.
"""

from rlattr.training.board import Board, BoardConfig
from rlattr.training.callback import RecordRun
from rlattr.training.evaluation import EvalEveryRound, EvalPoint, evaluate_policy_batched
from rlattr.training.filters import IIF, keep_mask
from rlattr.training.hooks import ScoreHook
from rlattr.training.intervention import Intervention
from rlattr.training.oracle import GroundTruthFilter
from rlattr.training.ppo import AttributedPPO
from rlattr.training.score_plot import ScoreAdvantagePlot
from rlattr.training.seams import (
    FilterDecision,
    IterationContext,
    IterationListener,
    IterationResult,
    IterationResults,
    KeepMaskFilter,
    RecordHook,
    StoredScores,
)

__all__ = [
    "IIF",
    "AttributedPPO",
    "Board",
    "BoardConfig",
    "EvalEveryRound",
    "EvalPoint",
    "FilterDecision",
    "GroundTruthFilter",
    "Intervention",
    "IterationContext",
    "IterationListener",
    "IterationResult",
    "IterationResults",
    "KeepMaskFilter",
    "RecordHook",
    "RecordRun",
    "ScoreAdvantagePlot",
    "ScoreHook",
    "StoredScores",
    "evaluate_policy_batched",
    "keep_mask",
]
