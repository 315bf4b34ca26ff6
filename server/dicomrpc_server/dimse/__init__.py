"""The DIMSE adapter: C-ECHO, -STORE, -FIND, -GET, -MOVE, Storage Commitment, on the cores.

Like ``grpc/`` and ``dicomweb/`` it only translates: association and DIMSE messages in, the
store, search and retrieve cores' requests out, their results and errors back as DIMSE
statuses (mapped once, in :mod:`.statuses`).
"""
