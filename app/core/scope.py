"""Keys of the per-request ASGI ``scope["state"]`` that stages hand to later stages."""

from __future__ import annotations

# The edge keeps the path exactly as received here, before normalising scope["path"]:
# the signature covers what the proxy sent, the decision covers the normalised form.
SIGNED_PATH_KEY = "signed_path"
# The HTTP protocol answered the request itself (its body's framing broke while the app
# read it): the status it sent, for the edge's summary line and metrics.
SERVER_ANSWERED_KEY = "server_answered"
# The gateway error code of the request's problem answer (its server span's error.type).
ERROR_CODE_KEY = "error_code"
