"""Policy bundles: strict typed models (unknown keys are errors) and ``parameter_hash``.

A bundle is a folder of YAML files, one per governed surface. ``gates.yaml`` is shared by
all bundles (``policies/gates.yaml``) unless a bundle carries its own. ``parameter_hash``
is SHA-256 over the canonical form of every file plus the reference-data version: any
policy change anywhere moves it (the old engine hashed only S2).
"""

from __future__ import annotations

import difflib
import json
from functools import cache
from pathlib import Path
from typing import Any, TypeVar, get_args

import yaml
from pydantic import BaseModel, ValidationError

from seg1b_dask.errors import Code, Seg1BError
from seg1b_dask.io.hashing import canonical_json, sha256_hex
from seg1b_dask.io.package import BUNDLES
from seg1b_dask.policies.base import Strict
from seg1b_dask.policies.gates import GatesPolicy
from seg1b_dask.policies.states import GridPolicy, S2Policy, S3Policy, S4Policy, S6Policy, S8Policy, S9Policy

M = TypeVar("M", bound=BaseModel)

MODELS: dict[str, type[Strict]] = {
    "grid": GridPolicy,
    "s2_tile_weights": S2Policy,
    "s3_requirements": S3Policy,
    "s4_alloc_plan": S4Policy,
    "s6_jitter": S6Policy,
    "s8_egress": S8Policy,
    "s9_validation": S9Policy,
    "gates": GatesPolicy,
}


class PolicyBundle(Strict):
    """A validated bundle with its per-file digests and ``parameter_hash``."""

    name: str
    grid: GridPolicy
    s2_tile_weights: S2Policy
    s3_requirements: S3Policy
    s4_alloc_plan: S4Policy
    s6_jitter: S6Policy
    s8_egress: S8Policy
    s9_validation: S9Policy
    gates: GatesPolicy
    digests: dict[str, str]
    parameter_hash: str

    def canonical(self) -> dict[str, Any]:
        return {name: getattr(self, name).model_dump(mode="json") for name in MODELS}


def _load_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise Seg1BError(Code.E_POLICY_INVALID, f"not valid YAML ({exc.__class__.__name__})", file=path) from None


def parse_policy(name: str, data: Any, path: Path) -> Strict:
    return parse_model(MODELS[name], data, path, tuple(MODELS.values()))


def parse_model(model: type[M], data: Any, path: Path, family: tuple[type[BaseModel], ...]) -> M:
    """Validate YAML ``data`` read from ``path`` as ``model``; refusals are one coded line
    naming the key, with a "did you mean" among the keys ``family``'s models accept."""
    try:
        # JSON-mode strict validation: YAML lists are arrays, "0.5" is not a number.
        return model.model_validate_json(json.dumps(data))
    except TypeError as exc:
        raise Seg1BError(Code.E_POLICY_INVALID, f"value is not plain YAML data ({exc})", file=path) from None
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = _yaml_path(data, err["loc"])
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(err["loc"][-1]), sorted(_field_names(family)), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise Seg1BError(Code.E_POLICY_UNKNOWN_KEY, f"unknown policy key{hint}", file=path, key=loc) from None
        raise Seg1BError(Code.E_POLICY_INVALID, err["msg"], file=path, key=loc or "<root>") from None


def _yaml_path(data: Any, loc: tuple[Any, ...]) -> str:
    """The error's location as the keys a user sees in the YAML file (pydantic adds the
    mode's name for a discriminated union; the file has no such key)."""
    parts, node = [], data
    for part in loc:
        if (
            isinstance(node, dict)
            and part in node
            or isinstance(node, list)
            and isinstance(part, int)
            and part < len(node)
        ):
            node = node[part]
        elif isinstance(node, dict) and node.get("mode") == part:
            continue  # the union's tag, not a key
        parts.append(str(part))
    return ".".join(parts)


@cache
def _field_names(family: tuple[type[BaseModel], ...]) -> set[str]:
    """Every key the models of ``family`` (and the models inside them) accept."""
    names: set[str] = set()
    stack: list[type[BaseModel]] = list(family)
    seen: set[type[BaseModel]] = set()
    while stack:
        model = stack.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, field in model.model_fields.items():
            names.add(name)
            stack.extend(_models_in(field.annotation))
    return names


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def shipped_bundles() -> list[Path]:
    """The policy bundles shipped with the package."""
    return sorted(p for p in BUNDLES.iterdir() if (p / "grid.yaml").is_file())


def _check_folder(directory: Path) -> None:
    """A missing folder, or one holding no policy file, is named as such (not as its first
    missing file), with the bundles shipped with the package."""
    shipped = f"{', '.join(p.name for p in shipped_bundles())} in {BUNDLES}"
    if not directory.is_dir():
        problem = "the policy bundle folder is missing" if not directory.exists() else "--policies names a file"
    elif not any((directory / f"{name}.yaml").is_file() for name in MODELS if name != "gates"):
        problem = "the folder holds no policy file (grid.yaml, s2_tile_weights.yaml, …): it is not a policy bundle"
    else:
        return
    raise Seg1BError(
        Code.E_POLICY_MISSING,
        f"{problem}: pass --policies a bundle folder, e.g. one shipped with seg1b ({shipped})",
        file=directory.resolve(),
    )


def load_bundle(directory: Path, refdata_version: str) -> PolicyBundle:
    directory = Path(directory)
    _check_folder(directory)
    parsed: dict[str, Strict] = {}
    for name in MODELS:
        path = directory / f"{name}.yaml"
        if not path.is_file() and name == "gates":
            path = directory.parent / "gates.yaml"
            if not path.is_file():
                raise Seg1BError(
                    Code.E_POLICY_MISSING,
                    "gates.yaml is missing: a bundle reads it from its own folder, else from the folder above "
                    "(copy policies/gates.yaml beside the bundle's files)",
                    file=directory.resolve() / "gates.yaml",
                )
        if not path.is_file():
            raise Seg1BError(Code.E_POLICY_MISSING, f"policy file {name}.yaml is missing", file=path.resolve())
        parsed[name] = parse_policy(name, _load_yaml(path), path)
    digests = {name: sha256_hex(canonical_json(model.model_dump(mode="json"))) for name, model in parsed.items()}
    parameter_hash = sha256_hex(canonical_json({"policies": digests, "refdata": refdata_version}))
    return PolicyBundle.model_validate(
        {"name": directory.name, "digests": digests, "parameter_hash": parameter_hash, **parsed}
    )


def bundle_from_canonical(name: str, canonical: dict[str, Any], refdata_version: str) -> PolicyBundle:
    """Rebuild a bundle from the canonical form sealed with a run (never the live files)."""
    parsed = {k: parse_policy(k, v, Path(f"<sealed:{k}>")) for k, v in canonical.items()}
    digests = {k: sha256_hex(canonical_json(m.model_dump(mode="json"))) for k, m in parsed.items()}
    parameter_hash = sha256_hex(canonical_json({"policies": digests, "refdata": refdata_version}))
    return PolicyBundle.model_validate({"name": name, "digests": digests, "parameter_hash": parameter_hash, **parsed})


def sealed_bundle(run: dict[str, Any]) -> PolicyBundle:
    """The policies sealed with a run, never the live files."""
    bundle = bundle_from_canonical(run["policy_bundle"], run["policies"], run["refdata_version"])
    if bundle.parameter_hash != run["parameter_hash"]:
        raise Seg1BError(
            Code.E_TOKEN_MISMATCH, "sealed policies do not hash to the run's parameter_hash", key="policies"
        )
    return bundle
