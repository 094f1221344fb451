"""The registry: SQL store of every event, `study.processed`, the REST API and its page.

`app` (the service), `consumer` (event → rows), `models`/`migrations` (schema), `api`,
`routes`, `clinical_api`, `web` (HTTP), `auth` and `audit` (tokens, audit log),
`clinical` and `exports` (clinical import, CSV/TSV), `missing` (missing-scan check).
"""
