-- resource_live (resource_type, id) INCLUDE (deleted) no longer serves any search: a walk of
-- resources in id order needs each row's key (rid) for the index probes, so it reads the
-- table anyway and takes the primary key; lookups by key take resource_rid. It cost every
-- write an index entry.
DROP INDEX ehr.resource_live;
