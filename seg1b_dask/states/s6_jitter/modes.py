"""S6's policy modes by name: every dispatch on ``jitter.mode`` goes through ``MODES``."""

from __future__ import annotations

from seg1b_dask.policies.states import S6MixtureV3, S6UniformV1
from seg1b_dask.states.s6_jitter.contract import JitterMode
from seg1b_dask.states.s6_jitter.mixture_v3 import MixtureV3
from seg1b_dask.states.s6_jitter.uniform_v1 import UniformV1

MODES: dict[str, type[UniformV1] | type[MixtureV3]] = {"uniform_v1": UniformV1, "mixture_v3": MixtureV3}


def mode_of(policy: S6UniformV1 | S6MixtureV3) -> JitterMode:
    """The mode that runs ``policy``."""
    return MODES[policy.mode](policy)  # type: ignore[arg-type]  # the table pairs each name with its policy
