"""Config section of the query service (composed in soe.config as `serve`)."""

from __future__ import annotations

from soe.section import Section


class ServeSettings(Section):
    host: str = "127.0.0.1"  # bind address of `soe serve`
    port: int = 8080  # port of `soe serve`
