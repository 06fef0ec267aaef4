-- Access records not yet turned into AuditEvent resources (see src/audit.rs).
-- A write's record is inserted in the write's own transaction; the records of reads and
-- searches answered at the same moment are inserted together, as one row, before the answers
-- leave (one row and one index entry per group, not per record: recording a read costs the
-- database a few hundred bytes of WAL). A relay turns rows into AuditEvents and deletes them
-- in one transaction, oldest first (seq), so every record becomes exactly one AuditEvent.
CREATE TABLE ehr.audit_outbox (
    seq BIGSERIAL PRIMARY KEY,
    records TEXT NOT NULL        -- JSON array of sen_ehr::audit::Entry
);
-- Stored out of line and uncompressed: rows live for seconds, compressing them (pglz) would
-- cost the request path CPU for nothing.
ALTER TABLE ehr.audit_outbox ALTER COLUMN records SET STORAGE EXTERNAL;
