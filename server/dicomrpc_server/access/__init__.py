"""Access control shared by both adapters: who is calling, and what each call needs.

The adapters only extract credentials (a bearer token, a client certificate's subject, the peer
address) and map errors; :class:`~.authenticator.Authenticator` turns credentials into a
:class:`~.caller.Caller`, and :mod:`.scopes` holds the one table of what each RPC and route
needs.
"""
