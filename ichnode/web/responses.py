"""OpenAPI response descriptions and parameter types the routers share."""

from __future__ import annotations

from fastapi import Path as PathParam

UID_PATH = PathParam(max_length=64, description="A DICOM UID.")

NOT_FOUND = {404: {"description": "No such study or instance."}}
UNAUTHORIZED = {401: {"description": "http.token is set and the request did not carry it."}}
IDENTIFIERS_HIDDEN = {
    400: {"description": "A search by accession number while patient identifiers are hidden."}
}
