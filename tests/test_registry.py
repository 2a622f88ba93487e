"""Plugins register step kinds through the `embedpipe.steps` entry-point group."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from embedpipe import dag as dag_mod
from embedpipe import registry
from embedpipe.errors import SpecError
from embedpipe.steps import Step, StepConfig

PLUGIN = '''
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc

from embedpipe import schemas
from embedpipe.steps import Link, Step, StepConfig, StepContext


class ShoutConfig(StepConfig):
    suffix: str = "!"


class Shout(Step):
    """Upper-case chunk text.

    ```yaml
    loud: {type: shout, input: chunks, suffix: "!"}
    ```
    """

    type = "shout"
    Config = ShoutConfig
    reads = pa.schema([schemas.CHUNKS.field("text")])

    def output_schema(self, inputs: list[Link]) -> pa.Schema:
        return inputs[0].schema

    def run(self, inputs, ctx: StepContext) -> Iterator[pa.RecordBatch]:
        for batch in inputs[0]:
            i = batch.schema.get_field_index("text")
            loud = pc.utf8_upper(batch.column(i))
            text = pc.binary_join_element_wise(loud, self.config.suffix, "")
            yield batch.set_column(i, "text", text)
'''


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Install a real (if tiny) distribution with an entry point onto sys.path."""
    (tmp_path / "shout_plugin.py").write_text(PLUGIN)
    dist = tmp_path / "shout_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: shout-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[embedpipe.steps]\nshout = shout_plugin:Shout\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.step_types.cache_clear()
    yield
    registry.step_types.cache_clear()
    sys.modules.pop("shout_plugin", None)


def test_plugin_step_is_found_and_type_checked(plugin: None, basic_spec: Path, write_spec) -> None:  # type: ignore[no-untyped-def]
    assert "shout" in registry.step_types()
    spec = write_spec(
        """
        name: loud
        steps:
          docs: {type: ingest, source: corpus.jsonl, format: beir}
          chunks: {type: chunk, input: docs}
          loud: {type: shout, input: chunks, suffix: "!!"}
          vectors: {type: encode, input: loud}
          bad: {type: shout, input: docs, sufix: "?"}
    """,
        "loud.yaml",
    )
    with pytest.raises(SpecError) as info:
        dag_mod.load(spec)
    assert "steps.bad.sufix: unknown key; did you mean 'suffix'?" in str(info.value)
    assert "steps.bad" not in str(info.value).split("sufix")[1]  # body errors stop the edge check


def test_builtins_cannot_be_shadowed_and_unknown_types_suggest() -> None:
    assert registry.lookup("encode").__module__ == "embedpipe.steps.encode"
    with pytest.raises(KeyError, match="did you mean 'chunk'"):
        registry.lookup("chunks")


def test_step_classes_are_checked_when_defined() -> None:
    with pytest.raises(TypeError, match="must forbid extra keys"):

        class Loose(StepConfig):
            model_config = {"extra": "allow"}  # type: ignore[assignment]

        class LooseStep(Step):
            """A step whose config accepts anything."""

            type = "loose"
            Config = Loose

    with pytest.raises(TypeError, match="needs a docstring"):

        class Bare(Step):
            type = "bare"
            Config = StepConfig


def test_plugin_step_runs_in_a_pipeline(plugin: None, corpus: Path, write_spec) -> None:  # type: ignore[no-untyped-def]
    import embedpipe

    spec = write_spec(
        """
        name: loud
        workspace: ws
        steps:
          docs: {type: ingest, source: corpus.jsonl, format: beir}
          chunks: {type: chunk, input: docs}
          loud: {type: shout, input: chunks, suffix: "!!"}
          vectors: {type: encode, input: loud}
          index: {type: index, input: vectors}
    """,
        "loud.yaml",
    )
    pipe = embedpipe.load(spec)
    assert pipe.dag.order.index("loud") < pipe.dag.order.index("vectors")
    result = pipe.run()
    assert result.status == "completed", result.error
    assert result.steps["loud"].rows_out == 6
    texts = [r["text"] for r in pipe.sql("select text from loud")]
    assert all(t.endswith("!!") and t == t.upper() for t in texts)
