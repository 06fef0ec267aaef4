-- The name walk index is PostgreSQL's (see postgres/0005); SQLite pages from names are unchanged.
SELECT 1;
