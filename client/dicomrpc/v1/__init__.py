"""Generated protobuf and gRPC code of the ``dicomrpc.v1`` API (do not edit; ``make proto``)."""
