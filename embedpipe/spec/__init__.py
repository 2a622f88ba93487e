"""Spec loading: YAML with positions, pydantic models, errors at file:line:col."""

from embedpipe.spec.load import Spec, StepDef, load

__all__ = ["Spec", "StepDef", "load"]
