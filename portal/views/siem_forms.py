"""The event stream form and messages, shared by the operators' page and an
organization's admin page."""

from __future__ import annotations

from typing import Any

from werkzeug.datastructures import MultiDict


def stream_values(form: MultiDict, operator: bool) -> dict[str, Any]:
    """``siem.create`` keyword arguments from the posted form. An organization's admins only
    choose a name, an HTTPS address, a format, the events and the signing secret."""
    values: dict[str, Any] = {
        "name": form.get("name", "")[:80], "target": form.get("target", "")[:500],
        "fmt": form.get("format", "json"), "secret": form.get("secret", "")[:200],
        "actions": form.get("actions", "").replace(" ", ",").split(","),
        "kind": "webhook", "start": "now"}
    if operator:
        values |= {"kind": form.get("kind", ""), "tls": form.get("tls") == "on",
                   "ca_file": form.get("ca_file", "")[:500],
                   "start": "all" if form.get("start") == "all" else "now"}
    return values


def state_message(name: str, enabled: bool, changed: bool) -> str:
    """The confirmation shown after the Pause or Resume button."""
    if not changed:
        return f"Stream {name} was already {'sending' if enabled else 'paused'}."
    if enabled:
        return (f"Stream {name} resumed: the events recorded while it was paused are sent "
                "first, in order.")
    return f"Stream {name} paused: its events wait, in order, until you resume it."
