-- Name rows in id order, for name searches (PostgreSQL). `Patient?name=nguyen` matches a third
-- of the city: the lookup index hands its 38,000 rows over in name order, and a page of 20 in
-- id order had to read and sort them all (567 pages/s at 100,000 patients). From this index a
-- page walks the parameter's rows in id order, tests the prefix on the included folded value
-- and stops after 20 matches; rare names still take the lookup range, by the planner's
-- estimate. Partial (names only), so that writing resources without names costs nothing more:
-- observations, the bulk of what a city writes, have none.
CREATE INDEX sp_string_name_walk ON ehr.sp_string (resource_type, code, id) INCLUDE (folded, rid)
    WHERE code IN ('name', 'family', 'given');
