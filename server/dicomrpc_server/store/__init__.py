"""Store (STOW): receiving instances, validating them and making them durable and indexed."""
