-- PostgreSQL only: SQLite searches use id sets, not lookups by resource key.
SELECT 1;
