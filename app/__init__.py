"""authz-gateway: a policy-engine-centred authorization gateway."""

__version__ = "0.1.0"
