"""The scopes a credential may be limited to: one per API surface.

Which route needs which scope is decided in one place, ``glimpse.api.admission``.
A credential that lists none of these may use them all (see ``Principal.require_scope``).
"""

from __future__ import annotations

__all__ = ["SCOPES"]

SCOPES = frozenset({"chat", "infer", "analyze", "batch"})
