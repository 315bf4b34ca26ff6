"""The OHIF web viewer, served at the root of the gateway's HTTP port.

:mod:`.package` knows the pinned release and its cache (and fetches it), :mod:`.app_config`
writes the viewer's configuration for the gateway, :mod:`.site` serves the files, and
:mod:`.command` is ``dicomrpc viewer fetch``.
"""
