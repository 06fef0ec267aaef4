-- Access records not yet turned into AuditEvent resources (see src/audit.rs and the
-- PostgreSQL migration of the same number). AUTOINCREMENT: a seq is never reused, even after
-- the relay has emptied the table.
CREATE TABLE ehr_audit_outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    records TEXT NOT NULL
);
