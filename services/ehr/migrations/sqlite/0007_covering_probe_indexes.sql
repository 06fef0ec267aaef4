-- Index rows that answer a page's probes without their table rows (SQLite).
-- A page that walks one condition's lookup rows in id order probes every other condition by
-- resource key, row after row (see search/query.rs, `probes_by_key`). Two of the four B-tree
-- searches per walked row went to table rows only to read columns an index can carry: the
-- walked row's key (rid) and the probed token's or date's values. Lookup indexes now end in
-- rid, as PostgreSQL's have since 0003 (INCLUDE there), and the per-resource indexes of tokens
-- and dates hold what their conditions compare. Same entries, a few bytes wider each.
-- Measured on the 1.1M-resource city (loadtests/RESULTS.md): one code's observations since
-- the last day, 34-41 ms -> 9-12 ms; code+date pages 1,317 -> 2,780/s, p99 87 -> 29 ms.
DROP INDEX sp_string_lookup;
CREATE INDEX sp_string_lookup ON ehr_sp_string (resource_type, code, folded, id, rid);
DROP INDEX sp_token_lookup;
CREATE INDEX sp_token_lookup ON ehr_sp_token (resource_type, code, value, system, id, rid);
DROP INDEX sp_reference_lookup;
CREATE INDEX sp_reference_lookup ON ehr_sp_reference (resource_type, code, target_id, target_type, id, rid);
DROP INDEX sp_date_lookup;
CREATE INDEX sp_date_lookup ON ehr_sp_date (resource_type, code, low, high, id, rid);
DROP INDEX sp_number_lookup;
CREATE INDEX sp_number_lookup ON ehr_sp_number (resource_type, code, value, id, rid);
DROP INDEX sp_uri_lookup;
CREATE INDEX sp_uri_lookup ON ehr_sp_uri (resource_type, code, value, id, rid);
DROP INDEX sp_token_resource;
CREATE INDEX sp_token_resource ON ehr_sp_token (rid, code, value, system);
DROP INDEX sp_date_resource;
CREATE INDEX sp_date_resource ON ehr_sp_date (rid, code, low, high);
