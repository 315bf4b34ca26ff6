"""Unified Procedure Step (UPS) workitems, PS3.4 Annex CC: the core both adapters translate.

- :mod:`.requirements`: the attribute requirements of PS3.4 Table CC.2.5-3, as data;
- :mod:`.states`: the state machine and the Annex CC status codes;
- :mod:`.index`: the matching keys and their secondary-index terms;
- :mod:`.store`: the LMDB records, written in one transaction per change;
- :mod:`.events`: the persisted event log and live, resumable subscriptions;
- :mod:`.service`: :class:`~.service.WorkitemCore`, the operations.
"""
