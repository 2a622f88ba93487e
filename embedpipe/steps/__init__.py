"""Step kinds: each module holds one step's config model, schemas and run()."""

from embedpipe.steps.base import Link, Step, StepConfig, StepContext

__all__ = ["Link", "Step", "StepConfig", "StepContext"]
