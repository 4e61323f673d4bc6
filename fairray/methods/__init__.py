"""Training methods: plugins of the one training loop (see :class:`Method` for the lifecycle)."""

from fairray.methods._base import METHODS, Batch, DevEval, LossOutput, Method, SamplerInput, TrainContext
from fairray.methods._groups import group_means, worst_stratum_gap
from fairray.methods._reduce import batch_sum
from fairray.methods._samplers import SAMPLERS
from fairray.methods.cberl import CBERL, CBERLParams
from fairray.methods.disent import DisEnt, DisEntNets, DisEntOutput, DisEntParams
from fairray.methods.dro import GroupAdjustedDRO, GroupDRO, ProbabilisticGroupDRO
from fairray.methods.erm import ERM, BaseLoss, BaseLossParams, class_balanced_weights
from fairray.methods.gear import GEAR, GEARNets, GEAROutput, GEARParams, gmae, gmae_weight, ipw_weights
from fairray.methods.lff import DifficultyWeights, LfF, LfFLogits, LfFNets, LfFParams, SampleLossEMA, gce
from fairray.methods.minmaxgap import MinMaxGap, MinMaxGapParams, dual_step
from fairray.methods.reweight import Downsampling, Reweighting, downsample, reweighting_table

__all__ = [
    "CBERL",
    "CBERLParams",
    "ERM",
    "GEAR",
    "GEARNets",
    "GEAROutput",
    "GEARParams",
    "gmae",
    "gmae_weight",
    "ipw_weights",
    "DifficultyWeights",
    "DisEnt",
    "DisEntNets",
    "DisEntOutput",
    "DisEntParams",
    "LfF",
    "LfFLogits",
    "LfFNets",
    "LfFParams",
    "SampleLossEMA",
    "gce",
    "Downsampling",
    "GroupAdjustedDRO",
    "GroupDRO",
    "ProbabilisticGroupDRO",
    "Reweighting",
    "downsample",
    "reweighting_table",
    "METHODS",
    "SAMPLERS",
    "BaseLoss",
    "batch_sum",
    "BaseLossParams",
    "Batch",
    "DevEval",
    "LossOutput",
    "Method",
    "MinMaxGap",
    "MinMaxGapParams",
    "SamplerInput",
    "TrainContext",
    "class_balanced_weights",
    "dual_step",
    "group_means",
    "worst_stratum_gap",
]
