-- Covering lookup and probe indexes are SQLite's (see sqlite/0007); PostgreSQL's lookup
-- indexes have carried the resource key since 0003.
SELECT 1;
