"""Step kinds: each module holds one step's config model, schemas and run()."""

from embedpipe.results import Event, Hit, Skipped, Stats
from embedpipe.steps.base import (
    ADDED,
    QUERY_TIME,
    SPEED_ONLY,
    Ann,
    FitContext,
    IndexTarget,
    Link,
    QueryEncoder,
    QueryStage,
    Scorer,
    Step,
    StepConfig,
    StepContext,
    VectorColumn,
)

__all__ = [
    "ADDED",
    "QUERY_TIME",
    "SPEED_ONLY",
    "Ann",
    "Event",
    "FitContext",
    "Hit",
    "IndexTarget",
    "Link",
    "QueryEncoder",
    "QueryStage",
    "Scorer",
    "Skipped",
    "Stats",
    "Step",
    "StepConfig",
    "StepContext",
    "VectorColumn",
]
