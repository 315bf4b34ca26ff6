"""The audit trail of one server: the outputs the settings ask for, each fed by its own sink.

The adapters' hooks call :meth:`Auditor.audit` once per audited call; the record is queued for
every output and the call goes on. With neither ``--audit-log`` nor ``--audit-syslog`` the
auditor is disabled and the hooks are not installed at all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from dicomrpc_server.audit.atna import AuditSource
from dicomrpc_server.audit.jsonl import JsonLinesOutput
from dicomrpc_server.audit.records import AuditRecord, Patient
from dicomrpc_server.audit.sink import AuditSink
from dicomrpc_server.audit.syslog import SyslogOutput, parse_address, tls_context
from dicomrpc_server.config import Settings

log = logging.getLogger("dicomrpc.audit")


class Auditor:
    """Writes audit records to the outputs configured in ``settings``.

    Raises ``ValueError`` naming the setting for a syslog address or protocol that cannot be
    used or an audit log that cannot be opened: a server asked to audit does not start without
    its audit trail.

    Parameters
    ----------
    settings
        The outputs to write to.
    patients
        The patient of a stored study, or None when it is not stored: records name the patients
        whose studies they touch, as PS3.15 A.5.3 asks.
    """

    def __init__(
        self, settings: Settings, patients: Callable[[str], Patient | None] | None = None
    ) -> None:
        self._patients = patients
        self.sinks: list[AuditSink] = []
        self._logs: list[JsonLinesOutput] = []
        if settings.audit_log is not None:
            try:
                output = JsonLinesOutput(settings.audit_log)
            except OSError as exc:
                raise ValueError(
                    f"--audit-log {settings.audit_log}: cannot be opened ({exc.strerror})"
                ) from None
            self._logs.append(output)
            self.sinks.append(AuditSink(output, settings.audit_queue))
        if settings.audit_syslog:
            host, port = parse_address(settings.audit_syslog)
            source = AuditSource.local(settings.audit_source_id)
            protocol = settings.audit_syslog_protocol
            files = (
                settings.audit_syslog_ca,
                settings.audit_syslog_cert,
                settings.audit_syslog_key,
            )
            if protocol != "tls" and any(f is not None for f in files):
                raise ValueError(
                    "--audit-syslog-ca, --audit-syslog-cert and --audit-syslog-key are for "
                    f"--audit-syslog-protocol tls, not {protocol}"
                )
            tls = tls_context(*files) if protocol == "tls" else None
            syslog = SyslogOutput(host, port, protocol, source, tls=tls)
            self.sinks.append(AuditSink(syslog, settings.audit_queue))

    @property
    def enabled(self) -> bool:
        """True when there is somewhere to write records."""
        return bool(self.sinks)

    def patients_of(self, studies: Iterable[str]) -> tuple[tuple[str, Patient], ...]:
        """The known patients of ``studies``; a lookup that fails never fails the call."""
        if self._patients is None:
            return ()
        found = []
        for study in dict.fromkeys(s for s in studies if s):
            try:
                patient = self._patients(study)
            except Exception:
                log.exception("the patient of study %s could not be read for the audit", study)
                continue
            if patient is not None:
                found.append((study, patient))
        return tuple(found)

    def audit(self, record: AuditRecord) -> None:
        """Queue ``record`` for every output; never waits for one."""
        for sink in self.sinks:
            sink.put(record)

    def reopen(self) -> None:
        """Reopen the audit log before its next write (SIGHUP, after a rotation)."""
        for output in self._logs:
            output.reopen()
        if self._logs:
            log.info("audit log will be reopened")

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (each output for at most ``timeout`` seconds), then stop."""
        for sink in self.sinks:
            sink.close(timeout)
