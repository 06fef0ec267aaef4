-- Search index: one table per search-parameter type, rows of current versions only, written
-- in the same transaction as the resource. code is the parameter's code (or code:modifier for
-- the rows that serve :text, :of-type and :identifier); grp ties the components of one
-- composite value together (0 otherwise). Text compares byte-wise (COLLATE "C" on
-- PostgreSQL), so prefix search is an index range on both backends. Lookup indexes end in id
-- so that a condition reads its ids from the index alone.
-- Every resource row gets an integer key in the order rows are created; index rows carry
-- it, so their per-resource index (for replacing a resource's rows) grows at its end instead
-- of taking random UUID positions.
-- SQLite's own rowid is not it: VACUUM may renumber the rowids of a table without an INTEGER
-- PRIMARY KEY, so the key is a column of its own, assigned by the (single) writer.
ALTER TABLE ehr_resource ADD COLUMN rid INTEGER;
UPDATE ehr_resource SET rid = rowid;
CREATE INDEX resource_rid ON ehr_resource (rid);

CREATE TABLE ehr_sp_string (
    resource_type TEXT NOT NULL,
    id TEXT NOT NULL,
    rid BIGINT NOT NULL,
    code TEXT NOT NULL,
    grp BIGINT NOT NULL,
    folded TEXT NOT NULL,
    exact TEXT NOT NULL
);
CREATE INDEX sp_string_lookup ON ehr_sp_string (resource_type, code, folded, id);
CREATE INDEX sp_string_resource ON ehr_sp_string (rid);

CREATE TABLE ehr_sp_token (
    resource_type TEXT NOT NULL,
    id TEXT NOT NULL,
    rid BIGINT NOT NULL,
    code TEXT NOT NULL,
    grp BIGINT NOT NULL,
    system TEXT NOT NULL,
    value TEXT NOT NULL
);
CREATE INDEX sp_token_lookup ON ehr_sp_token (resource_type, code, value, system, id);
CREATE INDEX sp_token_resource ON ehr_sp_token (rid);

CREATE TABLE ehr_sp_reference (
    resource_type TEXT NOT NULL,
    id TEXT NOT NULL,
    rid BIGINT NOT NULL,
    code TEXT NOT NULL,
    grp BIGINT NOT NULL,
    target_type TEXT NOT NULL,
    target_id TEXT NOT NULL,
    url TEXT NOT NULL
);
CREATE INDEX sp_reference_lookup ON ehr_sp_reference (resource_type, code, target_id, target_type, id);
CREATE INDEX sp_reference_target ON ehr_sp_reference (target_type, target_id);
CREATE INDEX sp_reference_resource ON ehr_sp_reference (rid);

CREATE TABLE ehr_sp_date (
    resource_type TEXT NOT NULL,
    id TEXT NOT NULL,
    rid BIGINT NOT NULL,
    code TEXT NOT NULL,
    grp BIGINT NOT NULL,
    low BIGINT NOT NULL,
    high BIGINT NOT NULL
);
CREATE INDEX sp_date_lookup ON ehr_sp_date (resource_type, code, low, high, id);
CREATE INDEX sp_date_resource ON ehr_sp_date (rid);

-- Numbers and quantities (numbers have empty system and unit).
CREATE TABLE ehr_sp_number (
    resource_type TEXT NOT NULL,
    id TEXT NOT NULL,
    rid BIGINT NOT NULL,
    code TEXT NOT NULL,
    grp BIGINT NOT NULL,
    value REAL NOT NULL,
    system TEXT NOT NULL,
    unit TEXT NOT NULL
);
CREATE INDEX sp_number_lookup ON ehr_sp_number (resource_type, code, value, id);
CREATE INDEX sp_number_resource ON ehr_sp_number (rid);

CREATE TABLE ehr_sp_uri (
    resource_type TEXT NOT NULL,
    id TEXT NOT NULL,
    rid BIGINT NOT NULL,
    code TEXT NOT NULL,
    grp BIGINT NOT NULL,
    value TEXT NOT NULL
);
CREATE INDEX sp_uri_lookup ON ehr_sp_uri (resource_type, code, value, id);
CREATE INDEX sp_uri_resource ON ehr_sp_uri (rid);

-- Searches check that a match is current from the index alone.
CREATE INDEX resource_live ON ehr_resource (resource_type, id, deleted);

-- The identifier-only index of the first release is replaced by sp_token.
DROP TABLE ehr_token_index;
