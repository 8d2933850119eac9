"""Liveness and readiness for load balancers and orchestrators."""

from __future__ import annotations

import sqlalchemy as sa
from flask import Blueprint, current_app, jsonify

from portal.extensions import services
from portal.migrate import current_revision, head_revision
from portal.permissions import public

bp = Blueprint("health", __name__)


@bp.get("/healthz")
@public
def healthz():
    return jsonify(status="ok")


@bp.get("/readyz")
@public
def readyz():
    checks: dict[str, str] = {}
    try:
        with services().db.engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
            revision = current_revision(connection)
        checks["database"] = "ok"
        head = head_revision()
        checks["migrations"] = ("ok" if revision == head else
                                f"database at {revision or 'empty'}, code expects {head}")
    except sa.exc.SQLAlchemyError as exc:
        current_app.logger.error("readiness: database check failed: %s", exc)
        checks["database"] = "unreachable"
        checks["migrations"] = "unknown"
    if current_app.config["REDIS_URL"]:
        checks["redis"] = _redis_check(current_app.config["REDIS_URL"])
    failed = [name for name, result in checks.items() if result != "ok"]
    body = {"status": "fail" if failed else "ok", "failed": failed, "checks": checks}
    engine = services().policy
    warnings = []  # still serving with the last good policy: a warning, not a failure
    if engine.reload_error is not None:
        warnings.append(f"policy files are broken, last good policy in force: "
                        f"{engine.reload_error.detail}")
    warnings += [f"the uploaded policy of {org} is broken, its last good rules stay in "
                 f"force: {error.detail}" for org, error in sorted(engine.org_errors.items())]
    if warnings:
        body["warnings"] = warnings
    return jsonify(body), 503 if failed else 200


def _redis_check(url: str) -> str:
    import redis
    try:
        redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        current_app.logger.error("readiness: redis check failed: %s", exc)
        return "unreachable"
    return "ok"
