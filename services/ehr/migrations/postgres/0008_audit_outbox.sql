-- Access records not yet turned into AuditEvent resources (see src/audit.rs).
-- A write's record is inserted in the write's own transaction; a read's or search's record
-- is inserted, with those of the requests answered at the same moment, before the answer
-- leaves. A relay turns rows into AuditEvents and deletes them in one transaction, oldest
-- first (seq), so every record becomes exactly one AuditEvent.
CREATE TABLE ehr.audit_outbox (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL,            -- the AuditEvent's id, chosen when the access happened
    recorded BIGINT NOT NULL,    -- microseconds since the Unix epoch
    body TEXT NOT NULL           -- the record (JSON of sen_ehr::audit::Record)
);
