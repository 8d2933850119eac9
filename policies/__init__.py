"""Authorization policy: the Casbin model, the policy files beside it, and the engine that
decides (subject, organization, object, action, context) -> allow or deny."""

from policies.engine import Attrs, Decision, Explanation, PolicyEngine, Sources
from policies.errors import PolicyError

__all__ = ["Attrs", "Decision", "Explanation", "PolicyEngine", "PolicyError", "Sources"]
