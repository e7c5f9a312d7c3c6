"""A FastAPI route: `uvicorn fastapi_app:app`, then GET /check-status.

The secrets come in through a dependency, so the route stays a plain async function and a
test can override `site_secrets`.
"""

from __future__ import annotations

from typing import Annotated

from check_status import check_status
from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse

from apiauth import Secrets, get_secrets_async

app = FastAPI(title="check-status")


async def site_secrets() -> Secrets:
    return await get_secrets_async()


@app.get("/check-status")
async def check(secrets: Annotated[Secrets, Depends(site_secrets)]) -> JSONResponse:
    status, body = check_status(secrets)
    return JSONResponse(body, status_code=status, headers={"Cache-Control": "no-store"})
