"""The JSON Schema of a spec, generated from the step kinds' own Config models, so editors
can validate and complete specs (``pipe schema > embedpipe.schema.json``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, create_model

from embedpipe import registry
from embedpipe.spec.models import PipelineSpec


def json_schema() -> dict[str, Any]:
    variants = tuple(
        create_model(
            f"{cls.__name__}Step",
            __base__=cls.Config,
            __doc__=(cls.__doc__ or "").strip(),
            type=(Literal[name], Field(description=f"The {name} step kind.")),
        )
        for name, cls in sorted(registry.step_types().items())
    )
    step = Annotated[Union[variants], Field(discriminator="type")]  # noqa: UP007
    model = create_model(
        "EmbedpipeSpec", __base__=PipelineSpec, steps=(dict[str, step], Field(min_length=1))
    )
    schema = model.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "embedpipe pipeline spec"
    return schema
