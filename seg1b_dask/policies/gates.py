"""The realism gates (``gates.yaml``): each gate's B and B+ lines, the plausibility figures
reported beside them, the bootstrap and the seeds a certification needs."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from seg1b_dask.policies.base import RegionFloors, Strict


class Gate(Strict):
    B: float
    B_PLUS: float


class Plausibility(Strict):
    """Figures reported beside the gates, never graded: how rural the sites are and how much
    goes to very small countries."""

    rural_km: float = Field(gt=0.0, le=1000.0, description="a site is rural beyond this from a town")
    rural_min_population: int = Field(ge=0, description="the people a place needs to count as a town")
    small_country_population: int = Field(ge=0, description="countries below this many people are small")


class GatesPolicy(Strict):
    version: Literal[1]
    required_seeds: tuple[int, ...]
    country_gini_max: Gate
    top10_share_max: Gate
    top5_share_max: Gate
    top1_share_max: Gate
    eligible_country_nonzero_share_min: Gate
    southern_hemisphere_share_min: Gate
    nn_contraction_min: Gate
    sentinel_flagged_max: Gate
    merchant_countries_median_max: Gate
    merchants_above_1a_max_share_max: Gate
    near_city_share_min: Gate
    near_city_km: float = Field(gt=0.0, le=1000.0)
    near_city_min_population: int = Field(ge=0)
    plausibility: Plausibility
    cross_seed_cv_max: Gate
    region_floor_share: RegionFloors
    bootstrap_replicates: int = Field(ge=100, le=100_000)
    bootstrap_seed: int = Field(ge=0)
