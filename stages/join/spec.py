"""The declarative consumer spec of the point-in-time join: one foundation model, many consumers.

A consumer (a ranking model's training table) is data, not code: a ``JoinSpec`` names its samples and output
tables, the ``lum_match`` condition order, the target item's condition feature, the LUM columns it wants and
``lag_days`` (>= 1 always: knowledge of day D or later never reaches the features of D). Knowledge asked with
the feedback feature ``liked`` (``category=X,liked=yes|no``) serves the same conditions: ``liked=yes`` fills
``lum_match``, ``lum_target_match`` and ``lum_user``, ``liked=no`` ``lum_target_match_disliked``, so a spec never
names ``liked`` (a ``ValueError``). ``load_spec(ref)``
takes a built-in name (``"dlrm"``, or a file ``stages/join/specs/<name>.toml``) or a TOML/JSON path; unknown keys
are a ``ValueError`` naming the key. A spec file, by example: docs/architecture.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from stages.core.conditions import FEEDBACK  # its value picks the column, never the condition
from stages.core.config import from_mapping, read_toml_or_json

LUM_FEATURES = ("lum_match", "lum_target_match", "lum_user", "lum_item", "lum_target_match_disliked")
SPECS_DIR = Path(__file__).resolve().parent / "specs"


@dataclass(frozen=True)
class JoinSpec:
    """What one consumer wants from the knowledge tables."""

    name: str = "dlrm"  # consumer name, recorded in the summary and the table metadata
    samples_table: str = "dlrm_samples"  # the consumer's labelled samples, one partition per ds
    output_table: str = "dlrm_training"  # where samples + LUM columns go (a schema in schemas/)
    conditions: tuple[str, ...] = ()  # fixed lum_match order; () = every items category, sorted
    target_feature: str = "category"  # items column naming the target item's own condition value
    features: tuple[str, ...] = LUM_FEATURES  # LUM columns to fill; the rest are null (schema is fixed)
    lag_days: int = 1  # knowledge_ds <= ds - lag_days; 1 = yesterday's inference, never today's

    def __post_init__(self) -> None:
        if not isinstance(self.lag_days, int) or self.lag_days < 1:
            raise ValueError(f"spec lag_days must be an int >= 1 (knowledge strictly before ds), got {self.lag_days!r}")
        unknown = [f for f in self.features if f not in LUM_FEATURES]
        if unknown:
            raise ValueError(f"spec features has unknown column(s) {unknown}; choose from {list(LUM_FEATURES)}")
        if len(set(self.conditions)) != len(self.conditions):
            raise ValueError(f"spec conditions has duplicates: {list(self.conditions)}")
        if not self.target_feature.isidentifier():
            raise ValueError(f"spec target_feature must be an items column name, got {self.target_feature!r}")
        named = [c for c in self.conditions if FEEDBACK in {p.split("=", 1)[0].strip() for p in c.split(",")}]
        if named or self.target_feature == FEEDBACK:
            raise ValueError(f"spec must not name feature {FEEDBACK!r} ({named[0] if named else 'target_feature'}): "
                             f"{FEEDBACK}=yes knowledge fills the LUM columns, {FEEDBACK}=no lum_target_match_disliked")

    def target_condition_prefix(self) -> str:
        """``"category="``: the target condition is this prefix + the item's ``target_feature`` value."""
        return f"{self.target_feature}="


DEFAULT_SPEC = JoinSpec()


def load_spec(ref: str | None) -> JoinSpec:
    """A spec from a built-in name, ``stages/join/specs/<name>.toml`` or a TOML/JSON file path."""
    if ref is None or ref == DEFAULT_SPEC.name:
        return DEFAULT_SPEC
    path = Path(ref)
    if not path.is_file():
        path = SPECS_DIR / f"{ref}.toml"
    if not path.is_file():
        raise ValueError(f"join spec {ref!r} is neither a built-in spec nor a file")
    return from_mapping(JoinSpec, read_toml_or_json(path, what="join spec"))
