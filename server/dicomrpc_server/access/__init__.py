"""Who is calling: the identity the adapters establish and the audit trail records."""
