"""The policy of each state: one strict model per YAML file, and one model per policy mode
(the ``mode`` key picks it). A mode's ``ADVICE`` names, per gate family, the knobs of that
mode that move it: the triage of a failed grade reads it, never the mode's name."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator

from seg1b_dask.policies.base import RegionFloors, Share, Strict, TopKCaps


class Eligibility(Strict):
    min_population: int = Field(ge=0)


class GridPolicy(Strict):
    """The global EPSG:4326 tile grid: resolution, Zarr layout and country eligibility."""

    version: Literal[1]
    resolution_arcsec: Literal[30, 60, 120, 150, 180, 300, 600, 900, 1800, 3600]
    shard_rows: int = Field(ge=1, description="rows per Zarr shard (and per S1/S2 task unit)")
    chunk_cols: int = Field(ge=1, description="columns per inner Zarr chunk")
    eligibility: Eligibility

    @field_validator("chunk_cols")
    @classmethod
    def _divides_the_row(cls, value: int, info: ValidationInfo) -> int:
        """A shard is a whole row band: its chunks must tile the row exactly (a chunk wider
        than the row is the row)."""
        resolution = info.data.get("resolution_arcsec")
        columns = 360 * 3600 // resolution if resolution else 0
        if value < columns and columns % value:
            raise ValueError(f"must divide the {columns} columns of the {resolution}″ grid (or exceed them)")
        return value


class S2Legacy(Strict):
    """Per-country normalized weights from one basis (the old engine's posture)."""

    mode: Literal["legacy"]
    basis: Literal["uniform", "area_m2"]
    area_quantum_m2: float = Field(gt=1e-3, le=1e12, description="fixed-point unit of tile_weight for the area basis")


class BasisMix(Strict):
    """Weights of the three cell-mass bases; each basis sums to 1 within a country."""

    uniform: Share
    area_m2: Share
    population: Share


class PopulationBasis(Strict):
    """Cell population from the vendored places: urban mass (places of at least
    ``min_place_population``, spread over a small kernel of same-country cells and capped at
    ``urban_cap_share`` of the country's table population) plus the rural remainder spread by
    cell area and weighted by ``rural_weight`` (outlets live where people shop)."""

    min_place_population: int = Field(ge=0, le=10_000_000)
    urban_cap_share: Share
    rural_weight: Share
    kernel_radius_cells: int = Field(ge=0, le=4, description="Gaussian kernel radius around each place, in cells")


class CountryMassPolicy(Strict):
    """The governed country mass vector S4 allocates to (DESIGN §5)."""

    population_exponent: float = Field(ge=0.0, le=2.0, description="base share ∝ population ** exponent")
    uniform_mix: Share
    concentration_penalty: Share = Field(description="tempering s ** (1 - penalty) of the base vector")
    region_floor_share: RegionFloors
    southern_floor_share: Share
    country_cap_share_soft: Share
    soft_cap_keep: Share = Field(description="share of the excess above the soft cap that is kept")
    country_cap_share_hard: Share
    max_population_share_multiple: float = Field(
        ge=0.0, le=1e6, description="hard cap ≤ this × the country's population share (0 = off)"
    )
    topk_cap_share: TopKCaps
    max_iterations: int = Field(ge=1, le=100_000)
    tolerance: float = Field(gt=0.0, le=1e-3)


class S2BlendV2(Strict):
    mode: Literal["blend_v2"]
    basis_mix: BasisMix
    population: PopulationBasis
    country_mass: CountryMassPolicy


class S2Policy(Strict):
    version: Literal[1]
    tile_weights: Annotated[S2Legacy | S2BlendV2, Field(discriminator="mode")]


class S3Policy(Strict):
    version: Literal[1]
    denylist_iso: tuple[str, ...] = ()


class CountryAllocationLegacy(Strict):
    """Exactly 1A's per-(merchant, country) counts."""

    mode: Literal["legacy"]


class TargetLimits(Strict):
    """How far S4(a) governs country totals (DESIGN §12): the target is the vector closest
    to 1A's own counts (the least relocation) inside these limits; among equally close
    vectors the one nearest S2's population vector wins (``prior_weight`` < 1 only breaks
    ties), so moved outlets go where people are. Every country with outlets holds at least
    ``min_sites_per_country``."""

    country_share_max: Share = Field(description="no country above this share (a home floor wins)")
    max_population_share_multiple: float = Field(
        ge=0.0, le=1e6, description="no country above this × its share of people (0 = off; a home floor wins)"
    )
    top_share_max: TopKCaps = Field(description="caps on the top k = ceil(f · countries with outlets)")
    prior_floor: Share = Field(description="every country holds at least this × its share of S2's vector")
    southern_share_min: Share
    region_floor_share: RegionFloors
    min_country_population: int = Field(
        ge=0, description="countries with fewer people receive outlets only where 1A or a home merchant has them"
    )
    prior_weight: float = Field(ge=0.0, lt=1.0, description="ties toward S2's country mass vector")


class CountryAllocationRemass(Strict):
    """Governed re-mass: targets closest to 1A within limits; merchants keep their home;
    moved outlets go to the merchant's own countries first, then the nearest."""

    mode: Literal["remass"]
    targets: TargetLimits
    min_sites_per_country: int = Field(ge=1, le=1000, description="every country with outlets holds at least this")
    home_sites_min: int = Field(
        ge=0, le=1000, description="every merchant keeps at least this many outlets at home (fewer if 1A has fewer)"
    )
    max_merchant_share: Share = Field(
        description="no merchant holds more than this share of what a country keeps or receives, where others can"
    )
    max_new_countries: int = Field(
        ge=1, le=1000, description="a merchant's moved outlets go to at most this many countries it lacks in 1A"
    )


class TileAllocation(Strict):
    method: Literal["largest_remainder", "systematic"]
    tie_break: Literal["tile_id", "keyed"]
    max_tile_share: Share = Field(description="guard: no tile above this share of a pair (1.0 = off)")
    min_sites_per_tile: int = Field(
        ge=1, le=1000, description="a tile left with fewer sites hands them to the nearest fuller tile (1 = off)"
    )


class S4Policy(Strict):
    version: Literal[1]
    country_allocation: Annotated[CountryAllocationLegacy | CountryAllocationRemass, Field(discriminator="mode")]
    tile_allocation: TileAllocation


class S6UniformV1(Strict):
    """Uniform in the cell."""

    mode: Literal["uniform_v1"]
    max_attempts: int = Field(ge=1, le=1024)


class S6MixtureV3(Strict):
    """A governed mixture inside the tile, every part scaled by the tile's footprint σ (the
    spread its expected outlets need at the stated density, outlets per km² per million
    outlets in all): a dense core around the tile's anchor (its population centre), secondary
    clusters around keyed points within ``secondary_reach`` σ of it, and a sparse tail within
    ``tail_reach`` σ. Placement therefore means the same at any number of sites."""

    mode: Literal["mixture_v3"]
    max_attempts: int = Field(ge=1, le=1024)
    core_share: Share
    secondary_share: Share
    secondary_clusters: int = Field(ge=1, le=64)
    secondary_reach: float = Field(ge=0.0, le=100.0, description="cluster centres within this many σ of the anchor")
    tail_reach: float = Field(gt=0.0, le=100.0, description="the tail spreads this many σ around the anchor")
    core_density_per_km2_per_million: float = Field(gt=0.0, le=1e6)


class S6Policy(Strict):
    version: Literal[1]
    jitter: Annotated[S6UniformV1 | S6MixtureV3, Field(discriminator="mode")]


class S8Policy(Strict):
    version: Literal[1]
    rows_per_part: int = Field(ge=1)


class S9Policy(Strict):
    """The grade a bundle targets: S9 seals it only when that grade's per-seed gates pass
    (``none``: structural checks only, as the baseline)."""

    version: Literal[1]
    target_grade: Literal["none", "B", "B_PLUS"]
