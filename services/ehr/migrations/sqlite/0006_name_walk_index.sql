-- Name rows in id order, for name search pages (SQLite; PostgreSQL has had it since 0005).
-- SQLite keeps no statistics to choose between walking these rows and reading a prefix's
-- range, so the store counts the prefix's rows up to a bound and names the index to use.
-- Partial, like PostgreSQL's, so that resources without names write nothing more; one index
-- per code, as SQLite serves a statement from a partial index only when the statement's
-- WHERE repeats the index's condition term for term.
CREATE INDEX sp_string_walk_name ON ehr_sp_string (resource_type, code, id, folded, rid)
    WHERE code = 'name';
CREATE INDEX sp_string_walk_family ON ehr_sp_string (resource_type, code, id, folded, rid)
    WHERE code = 'family';
CREATE INDEX sp_string_walk_given ON ehr_sp_string (resource_type, code, id, folded, rid)
    WHERE code = 'given';
