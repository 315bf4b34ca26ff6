"""Retrieve (WADO): instances, frames and metadata streamed back from storage and the index."""
