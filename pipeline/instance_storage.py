"""The `dagster:` section of signalbox.yaml: where the Dagster instance keeps its runs, events
and schedules.

SQLite files in the home (the default) suit one machine; PostgreSQL lets the webserver, the
daemon and runs on other machines share one instance (README "Beyond one machine"). Only the
storage is chosen here: the instance's other settings stay in pipeline/orchestration/instance.py.
Plain pydantic, no Dagster, so that loading the configuration stays cheap.
"""

from __future__ import annotations

import re
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

PG_EXAMPLE = "postgresql://signalbox:PASSWORD@db.example.org:5432/signalbox"
# SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3; dagster-postgres is built on psycopg2.
DRIVER_SCHEME = "postgresql+psycopg2"


def mask_url(text: str) -> str:
    """`text` with the password of any URL in it replaced by ***, for messages and listings."""
    return re.sub(r"(\b[a-z][a-z0-9+.-]*://[^\s:/@]*:)[^\s@/]*@", r"\1***@", text, flags=re.I)


class DagsterStorage(BaseModel):
    """`storage: sqlite` (files under <home>/dagster) or `postgres` at `postgres_url`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    storage: Literal["sqlite", "postgres"] = "sqlite"
    postgres_url: str | None = Field(None, validate_default=True)  # checked against storage

    @field_validator("postgres_url", mode="after")
    @classmethod
    def _url(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None:
            if info.data.get("storage") == "postgres":
                raise ValueError(f"is required with dagster.storage: postgres, e.g. {PG_EXAMPLE}")
            return v
        parts = urlsplit(v)
        if parts.scheme not in ("postgresql", DRIVER_SCHEME) or not parts.path.strip("/"):
            raise ValueError(
                f"must be a PostgreSQL URL with a database, such as {PG_EXAMPLE} (the password "
                "may instead come from PGPASSWORD or ~/.pgpass)"
            )
        return v

    @property
    def postgres(self) -> bool:
        return self.storage == "postgres"

    def shown_url(self) -> str:
        """The database URL without its password (for messages and the instance's stamp)."""
        return mask_url(self.postgres_url or "")

    def libpq_url(self) -> str:
        """The URL as libpq (psycopg2, psql) reads it."""
        return re.sub(r"^postgresql\+psycopg2://", "postgresql://", self.postgres_url or "")

    def dagster_block(self) -> dict[str, Any] | None:
        """The `storage:` entry of the instance's dagster.yaml (the URL naming its driver);
        None: Dagster's default, the SQLite files under the instance's directory."""
        if not self.postgres:
            return None
        url = re.sub(r"^postgresql://", f"{DRIVER_SCHEME}://", self.postgres_url or "")
        return {"postgres": {"postgres_url": url}}
