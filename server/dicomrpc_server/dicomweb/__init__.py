"""The DICOMweb gateway (PS3.18 over HTTP): STOW-RS, WADO-RS, QIDO-RS and delete on the cores.

Each module holds one concern: :mod:`.app` assembles the ASGI application, :mod:`.server` runs
it with uvicorn beside the gRPC server, :mod:`.errors` maps core errors to HTTP statuses,
:mod:`.media` negotiates media types, :mod:`.multipart` reads and writes multipart/related
bodies, and :mod:`.stow`, :mod:`.wado`, :mod:`.qido` and :mod:`.delete` hold the routes of one
resource each.
"""
