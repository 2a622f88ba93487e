"""The pipeline spec, stage one: the top level. Each step's body is checked in stage two
against its own step kind's ``Config`` (see ``embedpipe.spec.load``)."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class ScheduleSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    cron: str = Field(description="A cron expression, e.g. '0 2 * * *' (02:00 every night).")
    timezone: str = Field("UTC", description="IANA time zone the cron is read in.")

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        from datetime import datetime

        from cronsim import CronSim, CronSimError

        try:
            CronSim(value, datetime.now())
        except CronSimError as exc:
            raise ValueError(
                f"'{value}' is not a cron expression ({exc}); want 5 fields: minute hour "
                "day-of-month month day-of-week, e.g. '0 2 * * *'"
            ) from None
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"'{value}' is not an IANA time zone, e.g. UTC or Europe/Berlin"
            ) from None
        return value


class RunnerSpec(BaseModel):
    """How steps execute; the executor named by ``type`` checks its own further keys."""

    model_config = ConfigDict(extra="allow", frozen=True)

    type: str = Field(
        "local",
        description="The executor: local (in this process), or one a plugin registers "
        "through the embedpipe.executors entry-point group.",
    )

    @field_validator("type")
    @classmethod
    def _known(cls, value: str) -> str:
        from embedpipe import registry

        installed = registry.executor_names()
        if value not in installed:
            hint = registry.suggest(value, sorted(installed), "executors")
            raise ValueError(f"unknown executor '{value}'{hint}")
        return value

    @model_validator(mode="after")
    def _local_keys(self) -> RunnerSpec:
        # The local executor takes no keys; a plugin executor checks its own before a run.
        if self.type == "local" and self.model_extra:
            extra = ", ".join(sorted(self.model_extra))
            raise ValueError(f"unknown key(s) {extra}: the local executor takes only `type`")
        return self


def is_store_uri(uri: str | None) -> bool:
    """Whether ``tables.uri`` names an object store (SCHEME://...) rather than a folder."""
    return uri is not None and "://" in uri


def _option_text(value: Any) -> Any:
    """A storage option as Lance takes it: YAML's true and 30 become 'true' and '30'."""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value) if isinstance(value, int | float) else value


class TablesSpec(BaseModel):
    """Where the pipeline's Lance tables live (the rest of the workspace stays local)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    uri: str | None = Field(
        None,
        description="A folder (relative to the spec; e.g. a file system every Ray node "
        "mounts) or an object-store URI (s3://BUCKET/PREFIX, gs://BUCKET/PREFIX, az://...) "
        "that holds the index tables; default: the workspace's lance/ folder.",
    )
    storage_options: dict[str, str] = Field(
        default_factory=dict,
        description="Passed to Lance for an object-store uri: credentials, region, endpoint "
        "(e.g. aws_region, aws_endpoint; ${VAR} reads the environment). Without them Lance "
        "reads the usual environment variables (AWS_*, GOOGLE_*).",
    )

    @field_validator("uri")
    @classmethod
    def _uri(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.strip():
            raise ValueError("an empty uri: drop the key to keep the tables in the workspace")
        scheme, sep, rest = value.partition("://")
        valid = "use a folder, or SCHEME://BUCKET/PREFIX (s3, gs, az, s3+ddb, file-object-store)"
        if sep and (not re.fullmatch(r"[A-Za-z][\w+.-]*", scheme) or not rest.strip("/")):
            raise ValueError(f"'{value}' is not a storage URI; {valid}")
        if not sep and re.match(r"^[A-Za-z][\w+.-]+:", value):  # s3:/bucket: a typo, not a folder
            raise ValueError(f"'{value}' is neither a folder nor a storage URI; {valid}")
        return value

    @field_validator("storage_options", mode="before")
    @classmethod
    def _as_strings(cls, value: Any) -> Any:
        """Lance takes strings."""
        return {k: _option_text(v) for k, v in value.items()} if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _options_need_a_store(self) -> TablesSpec:
        if self.storage_options and not is_store_uri(self.uri):
            raise ValueError(
                "storage_options configure an object store: set uri to an s3://, gs:// or "
                "az:// URI, or drop storage_options"
            )
        return self


class PipelineSpec(BaseModel):
    """A pipeline: named steps that read each other's output."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        pattern=r"^[A-Za-z][A-Za-z0-9_-]*$",
        description="Names the flow, the default table and the catalog rows.",
    )
    description: str = Field("", description="Free text, shown by `pipe validate`.")
    workspace: str | None = Field(
        None, description="Run output directory, relative to the spec (default: workspace/NAME)."
    )
    steps: dict[str, dict[str, Any]] = Field(
        min_length=1, description="Step name -> step body; each body has a `type`."
    )
    schedule: ScheduleSpec | None = None
    runner: RunnerSpec = Field(default_factory=RunnerSpec)
    tables: TablesSpec = Field(default_factory=TablesSpec)
