"""How one audit event looks to a SIEM: Trellis's own JSON, OCSF or ArcSight CEF, and the
RFC 5424 syslog frame around any of them.

Pure functions over the exported audit row (``audit.export_rows`` shape), so the same event
renders identically whichever output carries it and a replay sends byte-identical bodies.
"""

from __future__ import annotations

import ipaddress
import json
from datetime import UTC, datetime
from typing import Any

FORMATS = ("json", "ocsf", "cef")
PRODUCT = {"name": "Trellis", "vendor_name": "Trellis", "version": "1.0"}
OCSF_VERSION = "1.1.0"
# OCSF Authentication (class 3002) activities for the sign-in events; other auth.* events
# (MFA, step-up, lockout, risk) are "Other" within the same class.
AUTH_ACTIVITIES = {"auth.login": (1, "Logon"), "auth.logout": (2, "Logoff")}
SYSLOG_FACILITY = 13  # "log audit"
SD_ID = "trellis@32473"  # enterprise number reserved for documentation (RFC 5612)


def render(row: dict[str, Any], fmt: str) -> Any:
    """The event as a JSON-able object (json, ocsf) or a text line (cef)."""
    if fmt == "ocsf":
        return ocsf(row)
    if fmt == "cef":
        return cef(row)
    return row


def line(row: dict[str, Any], fmt: str) -> str:
    """One line of text: what a file or a syslog message carries."""
    value = render(row, fmt)
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"),
                      default=str)


def _epoch_ms(row: dict[str, Any]) -> int:
    stamp = datetime.strptime(row["occurred_at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return int(stamp.timestamp() * 1000)


def is_sign_in(action: str) -> bool:
    return action.startswith("auth.")


def ocsf(row: dict[str, Any]) -> dict[str, Any]:
    """OCSF: Authentication (3002, category IAM) for sign-in events, the Base Event class
    (0) for the rest. Trellis's own fields travel in ``unmapped``."""
    failed = row["outcome"] != "success"
    if is_sign_in(row["action"]):
        class_uid, class_name, category_uid, category_name = 3002, "Authentication", 3, \
            "Identity & Access Management"
        activity_id, activity_name = AUTH_ACTIVITIES.get(row["action"], (99, "Other"))
    else:
        class_uid, class_name, category_uid, category_name = 0, "Base Event", 0, \
            "Uncategorized"
        activity_id, activity_name = 99, "Other"
    event: dict[str, Any] = {
        "class_uid": class_uid, "class_name": class_name,
        "category_uid": category_uid, "category_name": category_name,
        "activity_id": activity_id, "activity_name": activity_name,
        "type_uid": class_uid * 100 + activity_id,
        "time": _epoch_ms(row),
        "severity_id": 3 if failed else 1, "severity": "Medium" if failed else "Informational",
        "status_id": 2 if failed else 1, "status": "Failure" if failed else "Success",
        "message": f"{row['action']} {row['outcome']}",
        "metadata": {"version": OCSF_VERSION, "product": PRODUCT, "uid": str(row["seq"]),
                     "log_name": "audit", "correlation_uid": row["request_id"] or None},
        "actor": {"user": {"uid": _str(row["actor_id"]), "name": row["actor"] or None}},
        "unmapped": {"action": row["action"], "target": row["target"],
                     "organization_id": row["organization_id"], "details": row["details"],
                     "hash": row["hash"]},
    }
    if row["reason"]:
        event["status_detail"] = row["reason"]
    if row["ip"]:
        event["src_endpoint"] = {"ip": row["ip"]}
    if row["user_agent"]:
        event["http_request"] = {"user_agent": row["user_agent"]}
    if class_uid == 3002:
        event["user"] = {"uid": _str(row["actor_id"]), "name": row["actor"] or None}
        event["is_mfa"] = row["action"] in ("auth.mfa", "auth.step_up")
    return event


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def _cef_header(value: str) -> str:
    return value.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _cef_ext(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return (text.replace("\\", "\\\\").replace("=", "\\=").replace("\r\n", "\\n")
            .replace("\n", "\\n").replace("\r", "\\n"))


def cef(row: dict[str, Any]) -> str:
    """ArcSight Common Event Format, version 0: header fields escape ``|``, extension values
    escape ``=`` and newlines, so a crafted user agent cannot forge fields."""
    failed = row["outcome"] != "success"
    ext: list[tuple[str, Any]] = [
        ("rt", _epoch_ms(row)), ("act", row["action"]), ("outcome", row["outcome"]),
        ("externalId", row["seq"])]
    if row["actor"]:
        ext.append(("suser", row["actor"]))
    if row["actor_id"] is not None:
        ext.append(("suid", row["actor_id"]))
    if _valid_ip(row["ip"]):
        ext.append(("src", row["ip"]))
    if row["user_agent"]:
        ext.append(("requestClientApplication", row["user_agent"]))
    if row["reason"]:
        ext.append(("reason", row["reason"]))
    ext += [("cs1Label", "organizationId"), ("cs1", row["organization_id"] or ""),
            ("cs2Label", "target"), ("cs2", row["target"]),
            ("cs3Label", "details"), ("cs3", row["details"] or {}),
            ("cs4Label", "requestId"), ("cs4", row["request_id"]),
            ("cs5Label", "hash"), ("cs5", row["hash"])]
    header = "|".join(_cef_header(str(part)) for part in (
        "CEF:0", PRODUCT["vendor_name"], "Trellis Portal", PRODUCT["version"], row["action"],
        f"{row['action']} {row['outcome']}", 7 if failed else 3))
    values = (f"{key}={_cef_ext(str(v) if isinstance(v, int) else v)}" for key, v in ext)
    return header + "|" + " ".join(values)


def _valid_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _sd_value(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def syslog_frame(row: dict[str, Any], fmt: str, hostname: str, app_name: str = "trellis"
                 ) -> bytes:
    """An RFC 5424 message with RFC 6587 octet-counting framing (``LEN SP MSG``), so an event
    body may contain any byte, newlines included, without splitting the message."""
    severity = 4 if row["outcome"] != "success" else 6
    msgid = "".join(ch for ch in row["action"] if 33 <= ord(ch) <= 126)[:32] or "-"
    sd = (f'[{SD_ID} seq="{row["seq"]}" outcome="{_sd_value(row["outcome"])}"'
          f' org="{_sd_value(row["organization_id"] or "")}"]')
    message = (f"<{SYSLOG_FACILITY * 8 + severity}>1 {row['occurred_at']} {hostname or '-'} "
               f"{app_name} - {msgid} {sd} ").encode() + line(row, fmt).encode()
    return f"{len(message)} ".encode() + message
