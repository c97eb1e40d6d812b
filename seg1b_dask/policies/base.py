"""The building blocks every policy model shares: strict models (unknown keys are errors,
values never coerced), shares in [0, 1] and region floors over the known regions."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


Share = Annotated[float, Field(ge=0.0, le=1.0)]


def _known_regions(floors: dict[str, float]) -> dict[str, float]:
    from seg1b_dask.io.refdata import REGIONS

    unknown = sorted(set(floors) - set(REGIONS))
    if unknown:
        raise ValueError(f"unknown region {unknown[0]!r} (regions: {', '.join(REGIONS)})")
    if sum(floors.values()) >= 1.0:
        raise ValueError("region floors add up to 1 or more")
    # One order whatever the file's (or a sealed run's sorted JSON): floors apply in sequence.
    return {region: floors[region] for region in REGIONS if region in floors}


RegionFloors = Annotated[dict[str, Share], AfterValidator(_known_regions)]


class TopKCaps(Strict):
    """Caps on the share of the top k = ceil(f · n) countries (f = .01/.05/.10), n the countries
    the vector spreads over."""

    top1: Share
    top5: Share
    top10: Share
