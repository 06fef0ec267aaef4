//! Searches: the SQL of a [`SearchRequest`] run against the index tables, its total, and the
//! resources `_include` and `_revinclude` bring along.

use sqlx::{ColumnIndex, Database, Decode, Encode, Row, Type, query::Query};

use sen_platform::Backend;

use super::ResourceStore;
use crate::{
    error::EhrError,
    search::{
        keyset::{Position, SortKind, SortValue, order_terms},
        query::{Bind, Include, SearchRequest, SourceScan, code_match},
    },
};

/// Where a page starts: after an id (unsorted searches page by id) or after a position in
/// the sort order (sorted searches; see [`crate::search::keyset`]).
#[derive(Debug, Clone)]
pub enum PageStart {
    First,
    AfterId(String),
    After(Position),
}

/// A resource found: (type, id, stored JSON).
pub type Found = (String, String, String);

/// A page of matches, and the sort values of its rows when the search is sorted.
#[derive(Debug, Default)]
pub struct Page {
    pub found: Vec<Found>,
    pub sort_values: Vec<Vec<SortValue>>,
}

impl Page {
    /// The position of the `i`-th match, for a `next` link that starts after it.
    pub fn position(&self, i: usize) -> Option<Position> {
        Some(Position {
            values: self.sort_values.get(i)?.clone(),
            id: self.found.get(i)?.1.clone(),
        })
    }
}

/// `query` with `binds` bound in order (any driver: searches on SQLite run natively).
pub(super) fn bind_all<'q, DB>(
    mut query: Query<'q, DB, <DB as Database>::Arguments<'q>>,
    binds: &'q [Bind],
) -> Query<'q, DB, <DB as Database>::Arguments<'q>>
where
    DB: Database,
    &'q str: Encode<'q, DB> + Type<DB>,
    i64: Encode<'q, DB> + Type<DB>,
    f64: Encode<'q, DB> + Type<DB>,
{
    for b in binds {
        query = match b {
            Bind::Text(t) => query.bind(t.as_str()),
            Bind::Int(i) => query.bind(*i),
            Bind::Float(f) => query.bind(*f),
        };
    }
    query
}

/// (type, id, content) rows as a [`Page`], each row followed by sort values of `kinds`.
fn page_rows<R>(rows: &[R], kinds: &[SortKind]) -> Result<Page, EhrError>
where
    R: Row,
    usize: ColumnIndex<R>,
    String: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    Option<String>: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    Option<i64>: for<'r> Decode<'r, R::Database> + Type<R::Database>,
    Option<f64>: for<'r> Decode<'r, R::Database> + Type<R::Database>,
{
    let mut page = Page::default();
    for row in rows {
        page.found
            .push((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?));
        if kinds.is_empty() {
            continue;
        }
        let values = kinds
            .iter()
            .enumerate()
            .map(|(i, kind)| {
                let column = 3 + i;
                Ok(match kind {
                    SortKind::Text => row
                        .try_get::<Option<String>, _>(column)?
                        .map_or(SortValue::Null, SortValue::Text),
                    SortKind::Int => row
                        .try_get::<Option<i64>, _>(column)?
                        .map_or(SortValue::Null, SortValue::Int),
                    SortKind::Float => row
                        .try_get::<Option<f64>, _>(column)?
                        .map_or(SortValue::Null, SortValue::Float),
                })
            })
            .collect::<Result<_, sqlx::Error>>()?;
        page.sort_values.push(values);
    }
    Ok(page)
}

/// The `rows=` estimate of one line of PostgreSQL's text `EXPLAIN`.
fn planned_rows(line: &str) -> Option<i64> {
    let rest = &line[line.find(" rows=")? + " rows=".len()..];
    rest[..rest.find(|c: char| !c.is_ascii_digit())?]
        .parse()
        .ok()
}

impl ResourceStore {
    fn resource_table(&self) -> String {
        format!("{}resource", self.sql.index_prefix)
    }

    /// The SQL of one page of matches (at most `limit`) in the requested order, with their
    /// stored JSON: (type, id, content) rows, then the sort values. The page's ids are chosen
    /// first, reading no resource content, and only those rows then fetch their content, all
    /// in one statement (one round trip, one plan). An unsorted page starts from one condition's
    /// index rows rather than the resource table where it can, on both backends
    /// ([`SearchRequest::source_condition`]). Otherwise, on SQLite the filtered set is planned
    /// on its own (`LIMIT -1` keeps the planner from turning it into an id-ordered scan that
    /// evaluates every condition per resource, which a LIMIT otherwise invites) and only then
    /// ordered and cut; PostgreSQL plans it whole, its conditions probing by resource key,
    /// cheap from either side (see `probes_by_key`).
    pub(super) fn page_sql(
        &self,
        request: &SearchRequest,
        start: &PageStart,
        limit: usize,
        scan: SourceScan,
    ) -> Result<(String, Vec<Bind>), EhrError> {
        let prefix = self.sql.index_prefix;
        let mut binds = vec![Bind::Text(request.resource_type.as_str().to_string())];
        let keys = request.order_by(prefix, &mut binds);
        let columns: String = keys
            .iter()
            .enumerate()
            .map(|(i, key)| format!(", {} AS s{i}", key.expression))
            .collect();
        let table = self.resource_table();
        let source = request.source_condition(false);
        // Index rows may repeat a resource (two matching values); resource rows do not.
        let distinct = if source.is_some() { "DISTINCT " } else { "" };
        let mut inner = format!("SELECT {distinct}r.id AS id{columns} ");
        request.write_from(prefix, &table, source, scan, &mut inner, &mut binds)?;
        if let PageStart::AfterId(after) = start {
            binds.push(Bind::Text(after.clone()));
            inner.push_str(&format!(" AND r.id > ${}", binds.len()));
        }
        let page = if source.is_some() {
            // Cut at the same level as DISTINCT (pages from index rows are unsorted, in id
            // order): planned with its LIMIT, the index rows stream in id order through a
            // Unique and stop; as a subquery it was planned for all rows (hash joins over
            // every observation of a code: 420 ms instead of 3).
            format!("{inner} ORDER BY r.id LIMIT {limit}")
        } else {
            let after = match start {
                PageStart::After(position) => {
                    format!(" WHERE {}", position.after_sql("m", &keys, &mut binds))
                }
                _ => String::new(),
            };
            // The same order twice: to cut the page, then for the page joined to its content.
            format!(
                "SELECT m.* FROM ({inner}{}) m{after} ORDER BY {} LIMIT {limit}",
                self.sql.plan_barrier,
                order_terms("m", &keys)
            )
        };
        let values: String = (0..keys.len()).map(|i| format!(", p.s{i}")).collect();
        // Each resource's content by a subquery per page row rather than a join: nothing for
        // the planner to order (PostgreSQL: 10% less time for a subject+code page, most of it
        // planning), and the page stays the outer loop on SQLite, whose 3.46 planner with a
        // plain join scanned every resource of the type and probed the page (1M
        // observations: 110 ms instead of 0.1 ms).
        let sql = format!(
            "SELECT $1, p.id, (SELECT t.content FROM {table} t WHERE t.resource_type = $1 AND t.id = p.id){values} FROM ({page}) p ORDER BY {}",
            order_terms("p", &keys)
        );
        Ok((sql, binds))
    }

    /// One page of matches, in order, read through `conn`.
    pub(super) async fn page_on(
        &self,
        conn: &mut sqlx::AnyConnection,
        request: &SearchRequest,
        start: &PageStart,
        limit: usize,
    ) -> Result<Vec<Found>, EhrError> {
        let (sql, binds) = self.page_sql(request, start, limit, SourceScan::Planner)?;
        let rows = bind_all(sqlx::query(&sql), &binds)
            .fetch_all(&mut *conn)
            .await?;
        Ok(page_rows(&rows, &request.sort_kinds())?.found)
    }

    /// One page of matches (at most `limit`) in the requested order, with their sort values.
    pub async fn search_page(
        &self,
        request: &SearchRequest,
        start: &PageStart,
        limit: usize,
    ) -> Result<Page, EhrError> {
        let scan = self.source_scan(request).await?;
        let (sql, binds) = self.page_sql(request, start, limit, scan)?;
        self.fetch_page(&sql, &binds, &request.sort_kinds()).await
    }

    /// How a page reads its source rows ([`SourceScan`]): on SQLite a name prefix is walked
    /// when at least `WALK_FROM` rows carry it, else read as a range and sorted; a bounded
    /// count of the prefix's lookup rows decides (at most that many index entries read).
    async fn source_scan(&self, request: &SearchRequest) -> Result<SourceScan, EhrError> {
        /// The ratio at which a walk in id order beats a range sorted by id is the share of
        /// a page (20) in the rows walked; measured on the city (1.1M resources).
        const WALK_FROM: usize = 400;
        let Some((sql, binds)) = request.name_source_probe(self.sql.index_prefix, WALK_FROM) else {
            return Ok(SourceScan::Planner);
        };
        let common = self.read_count(&sql, &binds).await?;
        Ok(if common as usize >= WALK_FROM {
            SourceScan::Walk
        } else {
            SourceScan::Lookup
        })
    }

    /// How many resources match.
    pub async fn search_count(&self, request: &SearchRequest) -> Result<i64, EhrError> {
        let (sql, binds) = request.count_sql(self.sql.index_prefix, &self.resource_table())?;
        self.read_count(&sql, &binds).await
    }

    /// The one integer a counting statement answers, read under the statement timeout (as
    /// [`Self::fetch_page`]).
    async fn read_count(&self, sql: &str, binds: &[Bind]) -> Result<i64, EhrError> {
        if let Some(mut conn) = self.db.sqlite_bounded_read().await? {
            let row = bind_all(sqlx::query(sql), binds)
                .fetch_one(&mut *conn)
                .await?;
            return Ok(row.try_get(0)?);
        }
        let mut reader = self.pg_reader().await?;
        let row = bind_all(sqlx::query(sql), binds)
            .fetch_one(reader.conn())
            .await?;
        reader.done();
        Ok(row.try_get(0)?)
    }

    /// A PostgreSQL search connection (the backend has been checked not to be SQLite).
    async fn pg_reader(&self) -> Result<sen_platform::db::Reader<'_>, EhrError> {
        self.db
            .pg_read()
            .await?
            .ok_or_else(|| EhrError::Database(sqlx::Error::PoolClosed))
    }

    /// A total for `_total=estimate`: on PostgreSQL the planner's estimate of the matches
    /// (`EXPLAIN`: planned, no row read — the input estimate of the count's aggregate); SQLite
    /// keeps no such estimate and counts.
    pub async fn search_estimate(&self, request: &SearchRequest) -> Result<i64, EhrError> {
        if self.db.backend() != Backend::Postgres {
            return self.search_count(request).await;
        }
        let (sql, binds) = request.count_sql(self.sql.index_prefix, &self.resource_table())?;
        let explain = format!("EXPLAIN {sql}");
        let mut reader = self.pg_reader().await?;
        let rows = bind_all(sqlx::query(&explain), &binds)
            .fetch_all(reader.conn())
            .await?;
        reader.done();
        let lines = rows
            .iter()
            .map(|row| row.try_get::<String, _>(0))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(lines
            .iter()
            .skip(1)
            .find(|line| line.trim_start().starts_with("->"))
            .and_then(|line| planned_rows(line))
            .unwrap_or(0))
    }

    /// The resources `includes` name from `found` (and, with `:iterate`, from what they bring),
    /// and those `revincludes` find pointing at `found`; none twice, none already found.
    pub async fn search_includes(
        &self,
        found: &[Found],
        includes: &[Include],
        revincludes: &[Include],
    ) -> Result<Vec<Found>, EhrError> {
        let prefix = self.sql.index_prefix;
        let mut seen: std::collections::HashSet<(String, String)> = found
            .iter()
            .map(|(t, i, _)| (t.clone(), i.clone()))
            .collect();
        let mut out: Vec<Found> = Vec::new();
        let mut frontier: Vec<Found> = found.to_vec();
        for round in 0..3 {
            let mut next = Vec::new();
            for include in includes.iter().filter(|i| round == 0 || i.iterate) {
                let sources: Vec<&Found> = frontier
                    .iter()
                    .filter(|(t, _, _)| t == include.source.as_str())
                    .collect();
                if sources.is_empty() {
                    continue;
                }
                let mut binds = vec![Bind::Text(include.source.as_str().to_string())];
                let ids: Vec<String> = sources
                    .iter()
                    .map(|(_, id, _)| {
                        binds.push(Bind::Text(id.clone()));
                        format!("${}", binds.len())
                    })
                    .collect();
                // The sources' reference rows are found by resource key (the per-resource
                // index); by id they would be a scan of every row of the parameter.
                let table = self.resource_table();
                let mut sql = format!(
                    "SELECT t.resource_type, t.id, t.content FROM {prefix}sp_reference x JOIN {table} t ON t.resource_type = x.target_type AND t.id = x.target_id AND t.deleted = 0 \
                     WHERE x.rid IN (SELECT s.rid FROM {table} s WHERE s.resource_type = $1 AND s.id IN ({}))",
                    ids.join(", ")
                );
                if let Some(param) = &include.param {
                    let code = code_match(param, "", "x", &mut binds);
                    sql.push_str(&format!(" AND {code}"));
                }
                if let Some(target) = include.target {
                    binds.push(Bind::Text(target.as_str().to_string()));
                    sql.push_str(&format!(" AND x.target_type = ${}", binds.len()));
                }
                next.extend(self.fetch_found(&sql, &binds).await?);
            }
            for include in revincludes.iter().filter(|i| round == 0 || i.iterate) {
                if frontier.is_empty() {
                    break;
                }
                let mut binds = vec![Bind::Text(include.source.as_str().to_string())];
                let targets: Vec<String> = frontier
                    .iter()
                    .map(|(t, id, _)| {
                        binds.push(Bind::Text(t.clone()));
                        let t = binds.len();
                        binds.push(Bind::Text(id.clone()));
                        format!("(x.target_type = ${t} AND x.target_id = ${})", binds.len())
                    })
                    .collect();
                let mut sql = format!(
                    "SELECT s.resource_type, s.id, s.content FROM {prefix}sp_reference x JOIN {} s ON s.resource_type = x.resource_type AND s.id = x.id AND s.deleted = 0 \
                     WHERE x.resource_type = $1 AND ({})",
                    self.resource_table(),
                    targets.join(" OR ")
                );
                if let Some(param) = &include.param {
                    let code = code_match(param, "", "x", &mut binds);
                    sql.push_str(&format!(" AND {code}"));
                }
                next.extend(self.fetch_found(&sql, &binds).await?);
            }
            next.retain(|(t, i, _)| seen.insert((t.clone(), i.clone())));
            if next.is_empty() {
                break;
            }
            out.extend(next.iter().cloned());
            frontier = next;
        }
        Ok(out)
    }

    /// (type, id, content) rows of a search statement, read under the statement timeout
    /// (SQLite's bounded connections; PostgreSQL's search connections).
    async fn fetch_page(
        &self,
        sql: &str,
        binds: &[Bind],
        kinds: &[SortKind],
    ) -> Result<Page, EhrError> {
        if let Some(mut conn) = self.db.sqlite_bounded_read().await? {
            let rows = bind_all(sqlx::query(sql), binds)
                .fetch_all(&mut *conn)
                .await?;
            return page_rows(&rows, kinds);
        }
        let mut reader = self.pg_reader().await?;
        let rows = bind_all(sqlx::query(sql), binds)
            .fetch_all(reader.conn())
            .await?;
        reader.done();
        page_rows(&rows, kinds)
    }

    async fn fetch_found(&self, sql: &str, binds: &[Bind]) -> Result<Vec<Found>, EhrError> {
        Ok(self.fetch_page(sql, binds, &[]).await?.found)
    }
}

impl ResourceStore {
    /// Rebuilds the search index rows of up to `limit` current resources after `after`
    /// (type, id) in (type, id) order, of one type or all, in one transaction. Answers how
    /// many were indexed and where the next batch starts (`None` at the end).
    pub async fn reindex_batch(
        &self,
        only: Option<&str>,
        after: Option<&(String, String)>,
        limit: usize,
    ) -> Result<(usize, Option<(String, String)>), EhrError> {
        let mut binds: Vec<Bind> = Vec::new();
        let mut sql = format!(
            "SELECT resource_type, id, version_id, last_updated, method, deleted, content, {} FROM {} WHERE deleted = 0",
            super::resource_key(self.db.backend()),
            self.resource_table()
        );
        if let Some(rt) = only {
            binds.push(Bind::Text(rt.to_string()));
            sql.push_str(&format!(" AND resource_type = ${}", binds.len()));
        }
        if let Some((rt, id)) = after {
            binds.push(Bind::Text(rt.clone()));
            let a = binds.len();
            binds.push(Bind::Text(id.clone()));
            sql.push_str(&format!(
                " AND (resource_type > ${a} OR (resource_type = ${a} AND id > ${}))",
                binds.len()
            ));
        }
        sql.push_str(&format!(" ORDER BY resource_type, id LIMIT {limit}"));
        let mut tx = self.begin().await?;
        let rows = bind_all(sqlx::query(&sql), &binds)
            .fetch_all(&mut *tx)
            .await?;
        let mut last = None;
        for row in &rows {
            let version = super::version_from_row(row, 0)?;
            let rid: i64 = row.try_get(7)?;
            let tree: serde_json::Value =
                serde_json::from_str(&version.content).map_err(|_| EhrError::Invalid {
                    message: "stored JSON is unreadable".into(),
                    expression: None,
                })?;
            self.replace_index(&mut tx, &version, &tree, rid, true)
                .await?;
            last = Some((version.resource_type, version.id));
        }
        tx.commit().await?;
        let next = if rows.len() == limit { last } else { None };
        Ok((rows.len(), next))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_planned_rows_of_an_explain_line_are_read() {
        let line = "  ->  Index Only Scan using sp_token_lookup on sp_token r  (cost=0.56..4.58 rows=124791 width=8)";
        assert_eq!(super::planned_rows(line), Some(124_791));
        assert_eq!(
            super::planned_rows("Aggregate  (cost=1.00..1.01 rows=1 width=8)"),
            Some(1)
        );
        assert_eq!(super::planned_rows("  Filter: (code = $2)"), None);
    }
}
