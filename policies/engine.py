"""The policy engine: one Casbin enforcer per organization, built on first use and kept in a
bounded LRU cache.

A single enforcer holding every organization's rules costs a full scan per decision (measured
at 10k organizations: ~0.5 s); an organization's enforcer holds only the platform rules, its
kind's template, its own file and its own role grants, so a decision costs the same at 10 or
10,000 organizations, and a role in one organization can never grant anything in another.

The engine knows nothing of the portal: it reads policy files from a folder, and role grants,
platform roles, organization kinds and policy versions through callables it is given.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import casbin
from casbin import persist
from casbin.util import escape_assertion, key_match
from casbin.util.expression import SimpleEval
from casbin.util.log import disabled_logging

from policies import custom
from policies.errors import PolicyError
from policies.files import PolicyFiles, load_policy_files, parse_org_policy

MODEL = Path(__file__).resolve().parent / "model.conf"
VERSION_CHECK_SECONDS = 0.5  # another worker's change is seen within this (plus a request)
PLATFORM = "_platform"  # the domain of platform-level decisions (operator pages and APIs)
FILES_CHECK_SECONDS = 2.0  # edited policy files are picked up within this
FILES = "!files"  # the invalidation message "the policy files were reloaded"
log = logging.getLogger("trellis.policy")


class Attrs:
    """Attribute access for conditions (``r.obj.amount``); a missing attribute reads None."""

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, Any] | None = None, **more: Any) -> None:
        object.__setattr__(self, "_values", {**(values or {}), **more})

    def __getattr__(self, name: str) -> Any:
        return self._values.get(name)

    def __repr__(self) -> str:
        return f"Attrs({self._values!r})"


@dataclass(frozen=True)
class Decision:
    allowed: bool
    rule: tuple[str, ...] | None  # the policy row that decided, if any matched
    version: str  # policy files' fingerprint + the organization's grant version
    reason: str = ""


@dataclass(frozen=True)
class Explanation:
    decision: Decision
    roles: tuple[str, ...]  # every role the subject holds in the organization, inherited too
    platform_roles: tuple[str, ...]
    # How the subject reaches the deciding rule's role: (user, role, inherited role, ...);
    # ("*",) for a rule that applies to everyone, () when no rule matched.
    chain: tuple[str, ...] = ()
    # How the subject reaches each of its roles, shortest first (``g`` inside the
    # organization, ``g2`` for platform roles).
    chains: tuple[tuple[str, ...], ...] = ()
    # Every rule that matched the request, deciding or not (an allow a deny overrode, or a
    # second allow), each with where it is written and the subject's path to its role.
    matched: tuple[MatchedRule, ...] = ()
    where: str = ""  # file:line of the deciding rule ("uploaded policy" for an upload)


@dataclass(frozen=True)
class MatchedRule:
    rule: tuple[str, ...]
    where: str
    chain: tuple[str, ...]
    decided: bool


@dataclass
class Sources:
    """Where the engine reads what lives in the database (given by the portal)."""

    grants: Callable[[str], Iterable[tuple[str, str]]]  # org -> (user id, role)
    platform_roles: Callable[[], Iterable[tuple[str, str]]]  # (user id, platform role)
    org_kind: Callable[[str], str | None]  # org -> partner/vendor/internal, None if unknown
    version: Callable[[str], int] = field(default=lambda org: 0)  # bumps on grant changes
    # org -> the organization's uploaded policy text, None when it has none
    org_policy: Callable[[str], str | None] = field(default=lambda org: None)
    # org -> rows its admins composed (custom roles): ["p", role, org, obj, act, cond, eft]
    custom_rules: Callable[[str], Iterable[list[str]]] = field(default=lambda org: ())
    # Optional: org -> (kind, grants, platform roles, uploaded policy) in one go, for sources
    # where that saves round trips (a database); the separate callables otherwise.
    load: Callable[[str], tuple[str | None, Iterable[tuple[str, str]],
                                Iterable[tuple[str, str]], str | None]] | None = None


class _LinesAdapter(persist.Adapter):
    """Feeds prepared policy lines to an enforcer (nothing is ever saved back)."""

    def __init__(self, lines: list[list[str]]) -> None:
        self.lines = lines

    def load_policy(self, model) -> None:
        for line in self.lines:
            persist.load_policy_line(", ".join(line), model)


# Casbin follows role links at most this deep (its role manager's default hierarchy level:
# the user itself, then up to 9 links).
MAX_ROLE_LINKS = 9


class _Rules:
    """Decides as the model's matcher does, without scanning every row.

    pycasbin evaluates every policy row for every request and substitutes each row's
    condition into the matcher text first; an organization's rules never change once built
    (a change builds a new set), so rows are indexed by action, conditions are compiled once,
    and each user's inherited roles are cached. Same semantics — role (or ``*``), domain,
    ``keyMatch`` on the object type, action, condition, deny overrides — which the
    differential property test checks against a plain Casbin enforcer.

    Roles follow the matcher's ``g(r.sub.id, p.sub, r.dom) || g2(r.sub.id, p.sub)``: links
    inside the organization and platform links are followed separately (a platform role
    does not pick up an organization's inheritance, nor the other way round), a rule naming
    the user itself applies to that user, and links are followed as deep as Casbin does.
    """

    def __init__(self, enforcer: casbin.Enforcer, org: str) -> None:
        self.enforcer = enforcer
        self.org = org
        self.by_action: dict[str, list[tuple[tuple[str, ...], Any]]] = {}
        for row in enforcer.get_policy():
            _sub, dom, _obj, act, cond, _eft = row
            if dom not in ("*", org):
                continue
            self.by_action.setdefault(act, []).append((tuple(row), _compile(cond)))
        model = enforcer.get_model().model["g"]
        self.links = _links(model["g"].policy, org)
        self.platform_links = _links(model["g2"].policy, None)
        self._roles: dict[str, frozenset[str]] = {}

    def roles(self, user: str) -> frozenset[str]:
        roles = self._roles.get(user)
        if roles is None:
            found = {*_reach(self.links, user), *_reach(self.platform_links, user), "*"}
            roles = self._roles[user] = frozenset(found)
        return roles

    def chains(self, user: str) -> tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]]:
        """The shortest path from the user to each role it holds: in the organization, and
        on the platform."""
        return _reach(self.links, user), _reach(self.platform_links, user)

    def matching(self, subject: Attrs, obj: Attrs, action: str, context: Attrs
                 ) -> list[tuple[str, ...]]:
        """Every rule that matches the request, in policy order (for explanations)."""
        roles = self.roles(subject.id)
        names = {"r_sub": subject, "r_obj": obj, "r_ctx": context, "r_dom": self.org,
                 "r_act": action}
        found = []
        for row, condition in (*self.by_action.get(action, ()), *self.by_action.get("*", ())):
            if row[0] not in roles or not key_match(obj.type or "", row[2]):
                continue
            try:
                holds = condition.eval(names)
            except Exception:  # shown by the decision's own reason
                holds = False
            if holds:
                found.append(row)
        return found

    def decide(self, subject: Attrs, obj: Attrs, action: str, context: Attrs
               ) -> tuple[bool, tuple[str, ...] | None]:
        roles = self.roles(subject.id)
        names = {"r_sub": subject, "r_obj": obj, "r_ctx": context, "r_dom": self.org,
                 "r_act": action}
        allowed_by = None
        for row, condition in (*self.by_action.get(action, ()), *self.by_action.get("*", ())):
            if row[0] not in roles or not key_match(obj.type or "", row[2]):
                continue
            if not condition.eval(names):
                continue
            if row[5] == "deny":
                return False, row
            allowed_by = allowed_by or row
        return allowed_by is not None, allowed_by


def _links(rows: Iterable[list[str]], org: str | None) -> dict[str, list[str]]:
    """user or role -> the roles it is given directly (``g`` rows of this organization, or
    every ``g2`` row)."""
    links: dict[str, list[str]] = {}
    for row in rows:
        if org is not None and (len(row) < 3 or row[2] != org):
            continue
        links.setdefault(row[0], []).append(row[1])
    return links


def _reach(links: Mapping[str, list[str]], user: str) -> dict[str, tuple[str, ...]]:
    """Breadth first from the user: every name it reaches within ``MAX_ROLE_LINKS`` links
    (itself included), each with the shortest path to it."""
    paths = {user: (user,)}
    frontier = [user]
    for _ in range(MAX_ROLE_LINKS):
        following = []
        for name in frontier:
            for role in links.get(name, ()):
                if role not in paths:
                    paths[role] = (*paths[name], role)
                    following.append(role)
        if not following:
            break
        frontier = following
    return paths


def _compile(condition: str):
    expression = condition.replace("&&", " and ").replace("||", " or ")
    return SimpleEval(escape_assertion(expression))


@dataclass
class _Cached:
    enforcer: casbin.Enforcer | None
    rules: _Rules | None
    version: int
    checked: float
    lock: threading.Lock = field(default_factory=threading.Lock)


class PolicyEngine:
    """Decisions for every organization, one cached enforcer each.

    ``folder`` holds the policy files; ``sources`` reads what lives in the database. A change
    made in this process is in force at once through ``invalidate(org)``. Other workers learn
    of it through ``sources.version(org)``, checked at most every ``version_check_seconds``
    per cached organization, and — when ``redis_url`` is given — at once over Redis pub/sub
    (``policies.notify``). Call ``close()`` to stop listening.
    """

    def __init__(self, folder: Path, sources: Sources, *, cache_size: int = 2048,
                 clock: Callable[[], float] = time.monotonic,
                 version_check_seconds: float = VERSION_CHECK_SECONDS,
                 redis_url: str | None = None, redis_channel: str | None = None) -> None:
        disabled_logging()  # else Casbin logs each new enforcer's rules and grants at INFO
        self.folder = Path(folder)
        self.sources = sources
        self.cache_size = cache_size
        self.clock = clock
        self.version_check_seconds = version_check_seconds
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        # Bumped by every invalidation, so that an enforcer built while its organization was
        # invalidated is used once but never cached (it may hold the data before the change).
        self._generations: dict[str, int] = {}
        self._generation_all = 0
        self._reload_lock = threading.Lock()  # one re-read of the folder at a time
        self._stamp = _files_stamp(self.folder)  # before reading, as in ``_load_files``
        self.files: PolicyFiles = load_policy_files(self.folder)
        self._files_checked = clock()
        self.reload_error: PolicyError | None = None  # the broken edit kept out, if any
        # Uploaded organization policies: the last text that loaded, and what is broken now.
        self._org_good: dict[str, tuple[str, list[list[str]]]] = {}
        self.org_errors: dict[str, PolicyError] = {}
        self.source_error: Exception | None = None  # grants could not be checked, if so
        self.notifier = None
        if redis_url:
            from policies.notify import CHANNEL, RedisInvalidation
            self.notifier = RedisInvalidation(redis_url, self._remote,
                                              channel=redis_channel or CHANNEL)

    def close(self) -> None:
        """Stop listening for other workers' invalidations (if Redis was given)."""
        if self.notifier is not None:
            self.notifier.close()
            self.notifier = None

    # -- decisions ------------------------------------------------------------------------

    def decide(self, subject: Mapping[str, Any], org: str, obj: Mapping[str, Any],
               action: str, context: Mapping[str, Any] | None = None) -> Decision:
        return self._decide(self._enforcer(org), subject, obj, action, context)

    def _decide(self, cached: _Cached, subject: Mapping[str, Any], obj: Mapping[str, Any],
                action: str, context: Mapping[str, Any] | None) -> Decision:
        version = f"{self.files.fingerprint}:{cached.version}"
        if cached.enforcer is None:
            return Decision(False, None, version, "unknown organization")
        try:
            with cached.lock:  # compiled conditions keep per-call state
                allowed, rule = cached.rules.decide(
                    Attrs(subject, id=str(subject.get("id", ""))), Attrs(obj), action,
                    Attrs(context or {}))
        except Exception as exc:  # a condition that cannot be evaluated denies, visibly
            return Decision(False, None, version, f"condition error: {exc}")
        reason = "" if allowed else ("denied by rule" if rule else "no rule allows it")
        return Decision(bool(allowed), rule, version, reason)

    def explain(self, subject: Mapping[str, Any], org: str, obj: Mapping[str, Any],
                action: str, context: Mapping[str, Any] | None = None) -> Explanation:
        """The decision, the rule that made it, and how the subject came to hold the rule's
        role: ``chain`` is (user, granted role, inherited role, ...)."""
        cached = self._enforcer(org)
        decision = self._decide(cached, subject, obj, action, context)
        if cached.enforcer is None:
            return Explanation(decision, (), ())
        user = str(subject.get("id", ""))
        with cached.lock:
            in_org, on_platform = cached.rules.chains(user)
            matching = cached.rules.matching(
                Attrs(subject, id=user), Attrs(obj), action, Attrs(context or {}))

        def chain_to(role: str) -> tuple[str, ...]:
            return ("*",) if role == "*" else in_org.get(role) or on_platform.get(role, ())

        matched = tuple(MatchedRule(tuple(row), self.where(org, row), chain_to(row[0]),
                                    tuple(row) == decision.rule) for row in matching)
        chain = chain_to(decision.rule[0]) if decision.rule is not None else ()
        paths = sorted({path for path in (*in_org.values(), *on_platform.values())
                        if len(path) > 1}, key=lambda path: (len(path), path))
        return Explanation(decision, tuple(sorted(set(in_org) - {user})),
                           tuple(sorted(set(on_platform) - {user})), chain, tuple(paths),
                           matched, self.where(org, decision.rule) if decision.rule else "")

    def where(self, org: str, rule: tuple[str, ...] | list[str]) -> str:
        """``file:line`` of a rule, or "uploaded policy of <org>" for an uploaded one."""
        found = self.files.locate(rule)
        if found:
            return found
        uploaded = self._org_good.get(org)
        if uploaded is not None:
            for number, line in _numbered_rules(uploaded[0]):
                if tuple(line[1:]) == tuple(rule):
                    return f"uploaded policy of {org}, line {number}"
        return ""

    def permissions(self, subject: Mapping[str, Any], org: str) -> list[dict[str, Any]]:
        """What the subject may do in the organization: the allow rules reaching it through
        its roles (a rule with a condition holds only when the condition does)."""
        cached = self._enforcer(org)
        if cached.enforcer is None:
            return []
        user = str(subject.get("id", ""))
        with cached.lock:
            roles = cached.rules.roles(user)
            rows = [row for rows in cached.rules.by_action.values() for row, _ in rows]
        seen, result = set(), []
        for role, _dom, obj, act, cond, effect in rows:
            key = (obj, act, cond)
            if effect == "allow" and role in roles and key not in seen:
                seen.add(key)
                result.append({"object": obj, "action": act,
                               "condition": None if cond == "True" else cond})
        return sorted(result, key=lambda r: (r["object"], r["action"]))

    def held_roles(self, subject: Mapping[str, Any], org: str) -> frozenset[str]:
        """Every role the subject holds in the organization or on the platform, inherited ones
        included: a delegated admin may grant only roles among these."""
        cached = self._enforcer(org)
        if cached.enforcer is None:
            return frozenset()
        user = str(subject.get("id", ""))
        with cached.lock:
            return frozenset(cached.rules.roles(user) - {user, "*"})

    def version(self, org: str) -> str:
        return f"{self.files.fingerprint}:{self._enforcer(org).version}"

    # -- cache and reload -----------------------------------------------------------------

    def invalidate(self, org: str | None = None) -> None:
        """Drop one organization's enforcer (or all): the next decision rebuilds it. With
        Redis, every other worker drops it too."""
        self._drop(org)
        if self.notifier is not None:
            self.notifier.publish(org)

    def _drop(self, org: str | None) -> None:
        with self._lock:
            if org is None:
                self._cache.clear()
                self._generation_all += 1
            else:
                self._cache.pop(org, None)
                self._generations[org] = self._generations.get(org, 0) + 1

    def _remote(self, org: str | None) -> None:
        """Another worker changed something: an organization, everything, or the files."""
        if org == FILES:
            self._reload_if_edited(self.clock(), told=True)
        else:
            self._drop(org)

    def _generation(self, org: str) -> tuple[int, int]:
        return self._generation_all, self._generations.get(org, 0)

    def reload_files(self) -> None:
        """Re-read the policy folder. A broken file raises ``PolicyError`` naming file, line
        and reason, and the policy in force stays as it was."""
        with self._reload_lock:
            self._load_files(_files_stamp(self.folder))
        if self.notifier is not None:
            self.notifier.publish(FILES)

    def _load_files(self, stamp: tuple) -> None:
        """Put the folder in force under ``stamp``, taken before the files are read: an edit
        landing while they are read (a file truncated, not yet rewritten) then leaves the
        stamp behind, so the next check reads the folder again instead of keeping half an
        edit for good."""
        files = load_policy_files(self.folder)
        with self._lock:
            self.files = files
            self._stamp = stamp
            self._cache.clear()
            self._generation_all += 1

    def _reload_if_edited(self, now: float, *, told: bool = False) -> None:
        """Re-read an edited folder: at most every ``FILES_CHECK_SECONDS``, or at once when
        another worker says it reloaded (``told``). Only a worker that noticed the edit itself
        tells the others: a told worker answering would make each of them, and the sender,
        read the folder once more, perhaps in the middle of the next edit."""
        if not told and now - self._files_checked < FILES_CHECK_SECONDS:
            return
        with self._reload_lock:  # the listener thread and requests may both get here
            if not told and now - self._files_checked < FILES_CHECK_SECONDS:
                return
            self._files_checked = now
            stamp = _files_stamp(self.folder)
            reloaded = stamp != self._stamp and self._reload_logged(stamp)
        if reloaded and not told and self.notifier is not None:
            self.notifier.publish(FILES)

    def _reload_logged(self, stamp: tuple) -> bool:
        """A broken edit is logged once and kept out until the files change again."""
        try:
            self._load_files(stamp)
        except PolicyError as error:
            self._stamp = stamp
            self.reload_error = error
            log.error("policy files changed but are broken; the last good policy stays in "
                      "force: %s", error.detail)
            return False
        self.reload_error = None
        log.info("policy files reloaded: %s", self.files.fingerprint)
        return True

    def _enforcer(self, org: str) -> _Cached:
        now = self.clock()
        self._reload_if_edited(now)
        with self._lock:
            cached = self._cache.get(org)
            if cached is not None:
                self._cache.move_to_end(org)
        if cached is not None and now - cached.checked < self.version_check_seconds:
            return cached
        try:
            version = self.sources.version(org)
        except Exception as exc:  # e.g. the database went away: keep the last good policy
            if cached is None:
                raise
            log.error("cannot check the policy version of %s, deciding with the last good "
                      "policy: %s", org, exc)
            self.source_error = exc
            cached.checked = now
            return cached
        self.source_error = None
        if cached is not None and cached.version == version:
            cached.checked = now
            return cached
        with self._lock:
            generation = self._generation(org)
        enforcer = self._build(org)
        fresh = _Cached(enforcer, _Rules(enforcer, org) if enforcer else None, version, now)
        with self._lock:
            if self._generation(org) != generation:
                return fresh  # invalidated while building: good for this call only
            self._cache[org] = fresh
            self._cache.move_to_end(org)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return fresh

    def _uploaded_rules(self, org: str, text: str | None) -> list[list[str]]:
        """The organization's uploaded rules. Uploads are checked before they are stored, but
        the files they are checked against may change since: a text that no longer loads is
        reported (``org_errors``, ``/readyz``) and the last good rules of it stay in force."""
        if not text:
            self._org_good.pop(org, None)
            self.org_errors.pop(org, None)
            return []
        good = self._org_good.get(org)
        if good is not None and good[0] == text:
            return good[1]
        try:
            rules = parse_org_policy(self.files, org, text)
        except PolicyError as error:
            self.org_errors[org] = error
            log.error("the uploaded policy of %s is broken; its last good rules stay in "
                      "force: %s", org, error.detail)
            return good[1] if good is not None else []
        self._org_good[org] = (text, rules)
        self.org_errors.pop(org, None)
        return rules

    def _custom_rules(self, org: str, kind: str) -> list[list[str]]:
        """Custom roles' rows, each kept only while the kind's template (or the organization's
        file) still has the allow rule it was composed from, with the same condition:
        shrinking a template shrinks the custom roles built from it. A row may carry the
        owner's refinements (``policies.custom``) as JSON in an eighth field; the rule's
        condition is then the template's AND those, never more."""
        offered = {(line[3], line[4], line[5])
                   for line in (*self.files.kinds.get(kind, []), *self.files.orgs.get(org, []))
                   if line[0] == "p" and line[1] != "*" and line[6] == "allow"}
        rows = []
        for row in self.sources.custom_rules(org):
            when = row[5] if len(row) > 5 else "True"
            if (row[3], row[4], when) not in offered:
                continue
            try:
                condition = custom.compose(when, json.loads(row[7]) if len(row) > 7 else None)
            except (ValueError, PolicyError) as error:
                log.error("custom role %s of %s has a condition the platform does not allow; "
                          "left out: %s", row[1], org, error)
                continue
            rows.append(["p", row[1], org, row[3], row[4], condition, "allow"])
        return rows

    def _build(self, org: str) -> casbin.Enforcer | None:
        sources = self.sources
        if sources.load is not None:
            kind, grants, platform_roles, text = sources.load(org)
        else:
            kind = sources.org_kind(org)
            if kind is None:
                return None
            grants, platform_roles = sources.grants(org), sources.platform_roles()
            text = sources.org_policy(org)
        if kind is None:
            return None
        lines = self.files.lines_for(org, kind, self._uploaded_rules(org, text))
        lines += self._custom_rules(org, kind)
        lines += [["g", user, role, org] for user, role in grants]
        lines += [["g2", user, role] for user, role in platform_roles]
        enforcer = casbin.Enforcer(str(MODEL), _LinesAdapter(lines))
        enforcer.enable_auto_save(False)
        return enforcer


def _numbered_rules(text: str) -> list[tuple[int, list[str]]]:
    return [(number, [token.strip() for token in raw.strip().split(",")])
            for number, raw in enumerate(text.splitlines(), start=1)
            if raw.strip() and not raw.strip().startswith("#")]


def _files_stamp(folder: Path) -> tuple:
    """Names, sizes and modification times of the policy files: cheap to compare."""
    paths = [folder / "model.conf", folder / "platform.csv", *sorted(folder.glob("kinds/*.csv")),
             *sorted(folder.glob("orgs/*.csv"))]
    stamp = []
    for path in paths:
        try:
            info = path.stat()
        except OSError:
            continue
        stamp.append((str(path), info.st_size, info.st_mtime_ns))
    return tuple(stamp)
