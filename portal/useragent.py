"""The family of a browser, from its User-Agent header: browser and operating system, no
versions.

Sessions are bound to it (a session cookie replayed from another kind of browser ends the
session) and the new-device notice names it. Only the coarse family is needed, on every
request, so this is a handful of ordered substring checks rather than a full parser: a
browser update never changes the family, a different browser or system always does. The
header is chosen by the client, so the binding stops a stolen cookie used as-is from another
browser, not an attacker who also copies the header (see docs/security.md).
"""

from __future__ import annotations

from functools import lru_cache

# Order matters: Edge and Opera say "Chrome", Chrome says "Safari", iOS says "Mac OS X".
BROWSERS = (("edg/", "Edge"), ("edga/", "Edge"), ("edgios/", "Edge"), ("opr/", "Opera"),
            ("samsungbrowser/", "Samsung Internet"), ("firefox/", "Firefox"),
            ("fxios/", "Firefox"), ("crios/", "Chrome"), ("chromium/", "Chromium"),
            ("chrome/", "Chrome"), ("safari/", "Safari"), ("curl/", "curl"),
            ("python-requests/", "python-requests"))
SYSTEMS = (("iphone", "iOS"), ("ipad", "iOS"), ("android", "Android"), ("cros", "ChromeOS"),
           ("windows", "Windows"), ("mac os x", "macOS"), ("macintosh", "macOS"),
           ("linux", "Linux"))


@lru_cache(maxsize=512)
def family(user_agent: str | None) -> str:
    """``"Browser/System"``, e.g. ``"Firefox/Windows"``; ``"Other/Other"`` for what is not
    recognised (one family, so unknown clients stay bound to each other, not refused)."""
    text = (user_agent or "")[:512].lower()
    browser = next((name for needle, name in BROWSERS if needle in text), "Other")
    system = next((name for needle, name in SYSTEMS if needle in text), "Other")
    return f"{browser}/{system}"


def describe(user_agent: str | None) -> str:
    """For people: ``"Firefox on Windows"``."""
    browser, _, system = family(user_agent).partition("/")
    if browser == "Other" and system == "Other":
        return "an unknown browser"
    return f"{browser} on {system}" if system != "Other" else browser
