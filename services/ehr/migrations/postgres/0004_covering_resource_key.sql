-- A search that starts from index rows looks up each match's resource by key, for its id and
-- whether it is live: with those in the key index the lookup reads no table page (at 1M
-- resources, a name prefix matching 3,144 patients: 37 ms -> 11 ms).
DROP INDEX ehr.resource_rid;
CREATE UNIQUE INDEX resource_rid ON ehr.resource (rid) INCLUDE (resource_type, id, deleted);
