"""The scopes a credential may be limited to: one per API surface.

Which route needs which scope is decided in one place, ``glimpse.api.admission``.
A credential that lists none of these may use them all (see ``Principal.require_scope``), except the
explicit ones: ``admin`` (loading LoRA adapters, which reads folders on the server) must be granted by
name, so no key issued before it existed, and no anonymous caller, gets it.
"""

from __future__ import annotations

__all__ = ["ADMIN_SCOPE", "EXPLICIT_SCOPES", "SCOPES"]

ADMIN_SCOPE = "admin"
#: Scopes a credential holds only if it names them.
EXPLICIT_SCOPES = frozenset({ADMIN_SCOPE})
SCOPES = frozenset({"chat", "infer", "analyze", "batch", ADMIN_SCOPE})
