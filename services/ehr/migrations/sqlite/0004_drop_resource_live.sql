-- SQLite keeps resource_live: its searches match id sets (`r.id IN (…)`), which this index
-- answers with the deletion flag and no table read. PostgreSQL drops it here.
SELECT 1;
