"""What a step gives back: the groups' outcome flags of the CUDA results buffer, and the
results of Client.step and Client.cuda_step."""

import math
from dataclasses import dataclass, field
from typing import List

# The bits of a group's flags in the CUDA results buffer (CudaGradients.results; gstab.h's
# GSTAB_FLAG_), and of their OR in its header.
FLAG_ACCEPTED = 1 << 0
FLAG_SKIPPED = 1 << 1  # non-finite: skip the optimizer step
FLAG_ZERO_NORM = 1 << 2
FLAG_SPIKE = 1 << 3
FLAG_SPIKE_RATIO = 1 << 4
FLAG_DIVERGING = 1 << 5
FLAG_CLIPPED = 1 << 8
FLAG_MISMATCH = 1 << 9  # nodes disagreed on the step or groups: nothing applied
FLAG_VOIDED = 1 << 10  # a node or local GPU was lost, the all-reduce aborted: nothing applied
FLAG_WITH_STEP = 1 << 11  # finite, skipped with the step another group's non-finite norm skips
FLAG_UNREGISTERED = 1 << 12  # no worker registers the group (an import brought it): untouched


@dataclass
class GroupResult:
    group: str
    norm: float
    stabilized_norm: float
    scale: float
    z: float
    spike: bool
    skipped: bool
    diverging: bool


@dataclass
class StepResult:
    skip: bool
    diverging: bool
    spikes: int
    norm: float
    stabilized_norm: float
    result_step: int  # the step these results belong to (CUDA: the newest finished one)
    groups: List[GroupResult] = field(default_factory=list)
    # A job across nodes on the CPU backend: by how many steps this node's statistics went back
    # when it took node 0's at this step (node 0 restarted from an older checkpoint); else 0.
    statistics_rolled_back: int = 0
    # Why nothing was applied to step result_step (a CUDA step voided on the GPU, or one the
    # job's nodes disagreed on: skip is set, the norms NaN, the statistics unmoved); "" when
    # it was applied.
    not_applied: str = ""


def _lost_step(step: int) -> StepResult:
    """The result of a step whose gradients were zeroed because its own result was lost."""
    return StepResult(True, False, 0, math.nan, 0.0, step,
                      not_applied="its answer was lost (gstabd went away while it scaled): the "
                      "gradients were zeroed")
