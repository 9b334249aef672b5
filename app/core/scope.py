"""Keys of the per-request ASGI ``scope["state"]`` that stages hand to later stages."""

from __future__ import annotations

# The edge keeps the path exactly as received here, before normalising scope["path"]:
# the signature covers what the proxy sent, the decision covers the normalised form.
SIGNED_PATH_KEY = "signed_path"
