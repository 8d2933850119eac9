"""Authorization policy: the Casbin model, the policy files beside it, and the engine that
decides (subject, organization, object, action, context) -> allow or deny.

Names are imported lazily so that vendor apps can use ``policies.client`` (standard library
only) without installing the engine's dependencies.
"""

from importlib import import_module

_NAMES = {"Attrs": "policies.engine", "Decision": "policies.engine",
          "Explanation": "policies.engine", "PolicyEngine": "policies.engine",
          "Sources": "policies.engine", "PolicyError": "policies.errors"}
__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name in _NAMES:
        return getattr(import_module(_NAMES[name]), name)
    raise AttributeError(name)
