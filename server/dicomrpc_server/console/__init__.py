"""The archive's console: pages at ``/console/`` and the small reads they need at ``/console/api``.

The pages are static files (HTML, CSS and JavaScript modules, no build step) that hold no
patient data: they are served to everyone, so that a browser can load them before it holds a
token. Everything they show comes from authenticated calls: DICOMweb (QIDO-RS, WADO-RS, the
delete routes, UPS-RS) and the console's API, whose routes have scopes of their own in
:data:`~dicomrpc_server.access.scopes.CONSOLE_ROUTE_SCOPES`.
"""

CONSOLE_PREFIX = "/console"
API_PREFIX = CONSOLE_PREFIX + "/api"
