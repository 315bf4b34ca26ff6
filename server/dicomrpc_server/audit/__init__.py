"""The audit trail: one record per access to patient data, as JSON lines and ATNA syslog."""
