"""The gRPC adapter: servicers that translate between the API messages and the core."""
