"""OpenAPI response descriptions and parameter types the routers share."""

from __future__ import annotations

from typing import Any

from fastapi import Path as PathParam

#: A route's ``responses=``: status code -> its OpenAPI description.
Responses = dict[int | str, dict[str, Any]]

UID_PATH = PathParam(max_length=64, description="A DICOM UID.")

NOT_FOUND: Responses = {404: {"description": "No such study or instance."}}
UNAUTHORIZED: Responses = {
    401: {"description": "http.token is set and the request did not carry it."}
}
IDENTIFIERS_HIDDEN: Responses = {
    400: {"description": "A search by accession number while patient identifiers are hidden."}
}
