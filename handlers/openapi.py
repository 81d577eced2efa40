"""``GET /api/openapi.json``: the API's description, ``openapi.yaml`` at the repository root,
as JSON (what client generators and schemathesis read)."""

from __future__ import annotations

from pathlib import Path

import yaml

from handlers.base import APIHandler

OPENAPI_YAML = Path(__file__).resolve().parents[1] / "openapi.yaml"


class OpenAPIHandler(APIHandler):
    def get(self) -> None:
        # Read on each request: it is small, rarely asked for, and always the file on disk.
        with OPENAPI_YAML.open("rb") as handle:
            document = yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        self.set_header("Cache-Control", "no-cache")
        self.write_json(document)


default_handlers = [
    (r"/api/openapi.json", OpenAPIHandler),
]
