"""Group sources: which groups a debiasing method trains with (METHODS §1.3).

A group source turns the prepared table into training-group ids (``-1`` = unknown) and soft
memberships. Inferred groups are for training only: every fairness metric keeps using the true
attribute. Registered sources: ``attribute`` (the true protected attribute, one-hot memberships).
Pseudo-labels and k-means clusters over speaker embeddings (IDI) plug in here as further sources.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from fairray._registry import Registry
from fairray.errors import ConfigError


@dataclass(frozen=True)
class Groups:
    ids: np.ndarray  # int64 [N], -1 unknown
    values: tuple[str, ...]  # names of the ids
    prob: np.ndarray  # float32 [N, G], rows sum to 1 (0 for unknown)


#: name -> fn(meta, attr_codes, attr_values, params) -> Groups
GROUP_SOURCES: Registry[Callable[..., Groups]] = Registry("group source")


def one_hot(ids: np.ndarray, n: int) -> np.ndarray:
    prob = np.zeros((len(ids), n), dtype=np.float32)
    known = ids >= 0
    prob[np.flatnonzero(known), ids[known]] = 1.0
    return prob


@GROUP_SOURCES.register("attribute")
def attribute(meta: pd.DataFrame, attr: np.ndarray, attr_values: tuple[str, ...],
              params: Mapping[str, Any]) -> Groups:
    """The true protected attribute (``dataset.attribute``) as training groups."""
    if params:
        raise ConfigError(f"group source 'attribute' takes no parameters, got {sorted(params)}")
    return Groups(attr.astype(np.int64), tuple(attr_values), one_hot(attr, len(attr_values)))
