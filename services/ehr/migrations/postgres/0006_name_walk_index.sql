-- The name walk index came in 0005 on PostgreSQL; this migration adds SQLite's.
SELECT 1;
