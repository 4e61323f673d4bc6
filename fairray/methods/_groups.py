r"""Group reductions shared by the losses: group means with an empty-group guard.

The per-group sums and counts are :func:`~fairray.methods._reduce.batch_sum`\ s: under data parallelism
(Ray Train / DDP) they are all-reduced before the means are formed (METHODS 3.0), with a differentiable
all-reduce so every worker's samples receive the gradient of the global group means, and under gradient
accumulation they cover every micro-batch of the optimiser step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fairray.methods._reduce import batch_sum


def _fp32(t: torch.Tensor):
    """Autocast off for a group-sum matmul: in bf16 its rounding (~1e-2 of a loss) is as large as the gaps and
    q steps it feeds."""
    return torch.autocast(t.device.type, enabled=False)


def group_means(values: torch.Tensor, groups: torch.Tensor, n_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of ``values`` per group id and the group counts.

    ``groups`` holds ids in ``0..n_groups-1``; negative ids (unknown group) are ignored. An empty
    group has mean 0 and count 0 — callers decide presence from the counts.
    """
    values = values.float()  # sums and counts in float32, also under bf16/fp16 autocast (see _fp32)
    known = (groups >= 0).to(values.dtype)
    one_hot = F.one_hot(groups.clamp(min=0), n_groups).to(values.dtype) * known[:, None]
    with _fp32(values):
        sums = batch_sum(one_hot.T @ values)
    counts = batch_sum(one_hot.sum(dim=0))
    return sums / counts.clamp(min=1), counts


def stratum_cell_means(values: torch.Tensor, attr: torch.Tensor, stratum: torch.Tensor, n_attr: int,
                       n_strata: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``values`` and counts of every stratum x attribute cell, both ``[n_strata, n_attr]``.

    Samples of unknown attribute or stratum (-1) are left out; an empty cell has mean 0 and count 0.
    """
    cells = torch.where((attr >= 0) & (stratum >= 0), stratum * n_attr + attr, torch.full_like(attr, -1))
    means, counts = group_means(values, cells, n_strata * n_attr)
    return means.view(n_strata, n_attr), counts.view(n_strata, n_attr)


def stratum_gaps(means: torch.Tensor, present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per stratum (row of the ``[n_strata, n_attr]`` cell ``means``), the range of its present cells' means
    and whether it is valid (at least two present cells). An invalid stratum's gap is 0."""
    inf = torch.tensor(float("inf"), dtype=means.dtype, device=means.device)
    hi = torch.where(present, means, -inf).amax(dim=1)
    lo = torch.where(present, means, inf).amin(dim=1)
    valid = present.sum(dim=1) >= 2
    return torch.where(valid, hi - lo, torch.zeros_like(hi)), valid  # invalid strata add 0, and gaps are >= 0


def worst_stratum_gap(values: torch.Tensor, attr: torch.Tensor, stratum: torch.Tensor, n_attr: int,
                      n_strata: int, m_min: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``max_l Δ_l`` with ``Δ_l`` the range of the attribute groups' mean ``values`` in stratum ``l``.

    A stratum counts only when at least two of its groups have ``>= m_min`` samples; absent groups are
    skipped, never treated as zero-loss cells. Returns ``(Δ_max, Δ per stratum)``; ``Δ_max`` is 0 when
    no stratum is valid, and a stratum's entry is NaN when it is not valid.
    """
    means, counts = stratum_cell_means(values, attr, stratum, n_attr, n_strata)
    gaps, valid = stratum_gaps(means, counts >= m_min)
    worst = gaps.max()
    return worst, torch.where(valid, gaps, torch.full_like(gaps, float("nan"))).detach()


def soft_group_means(values: torch.Tensor, prob: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``L_g = Σ_i π_ig v_i / Σ_i π_ig`` and the soft counts ``Σ_i π_ig`` (PGDRO; all-reduced under DDP)."""
    values, prob = values.float(), prob.float()
    with _fp32(values):
        sums = batch_sum(prob.T @ values)
    mass = batch_sum(prob.sum(dim=0))
    return sums / mass.clamp(min=1e-12), mass


def q_step(q: torch.Tensor, group_losses: torch.Tensor, present: torch.Tensor, eta: float) -> torch.Tensor:
    """Online exponentiated-gradient step of group DRO (Sagawa et al., ``loss.py``).

    ``q_g ← q_g exp(η L_g)`` for present groups, then renormalise; absent groups keep their weight
    (the reference code decays them by feeding a zero loss, METHODS §3.7). ``group_losses`` are
    detached; one shift for all groups keeps ``exp`` finite and cancels in the renormalisation.
    """
    step = torch.where(present, eta * group_losses.detach(), torch.zeros_like(group_losses))
    shift = step[present].max() if bool(present.any()) else step.new_zeros(())
    q = q * torch.exp(step - shift)  # the same shift for every group, so it cancels below
    return q / q.sum()
