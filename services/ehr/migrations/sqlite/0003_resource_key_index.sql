-- The resource key index exists since 0002 on SQLite (resource_rid); PostgreSQL gains it here.
SELECT 1;
