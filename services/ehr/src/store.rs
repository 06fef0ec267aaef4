//! The resource store: current versions, full history and the search index, on SQLite or
//! PostgreSQL through one code path.
//!
//! Every write is one database transaction (current row, history row, index rows), and
//! is acknowledged only after it commits. Index rows for a resource are written in one
//! multi-row statement, never one round trip per value. No SQL lives outside this module.

mod search;
pub use search::{Found, Page, PageStart};
mod sql;
use sql::Sql;
mod write;

use sen_platform::{Backend, Database};

use sqlx::{Any, Row, any::AnyRow};
pub use write::Tx;
pub(crate) use write::versioned;

use crate::{
    criteria::Criteria,
    definitions::{Definitions, ResourceType},
    error::EhrError,
};

/// The HTTP interaction that produced a version (as recorded in history).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Post,
    Put,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "POST" => Method::Post,
            "DELETE" => Method::Delete,
            _ => Method::Put,
        }
    }
}

/// One version of one resource.
#[derive(Debug, Clone)]
pub struct Version {
    pub resource_type: String,
    pub id: String,
    pub version: i64,
    /// Microseconds since the Unix epoch.
    pub last_updated: i64,
    pub deleted: bool,
    pub method: Method,
    /// The stored JSON; empty for a deletion.
    pub content: String,
}

impl Version {
    pub fn last_updated_rfc3339(&self) -> String {
        format_instant(self.last_updated)
    }
}

/// `meta.lastUpdated` form of a timestamp: UTC, millisecond precision.
pub fn format_instant(micros: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&format).unwrap_or_default()
}

/// A new server-assigned resource id: a UUID version 7, whose leading bits are the creation
/// time, so that ids created together sort together. Every index keyed by id (the resource
/// and history keys, references to new resources) then grows near its end instead of touching
/// a random page per row, which is what bounds bulk ingest once the database outgrows memory.
/// The id reveals when the resource was created, which `meta.lastUpdated` tells anyway.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

fn now_micros() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX)
}

/// Which history to list.
#[derive(Debug, Clone)]
pub enum HistoryScope {
    System,
    Type(ResourceType),
    Instance(ResourceType, String),
}

/// A page of history, newest first.
#[derive(Debug)]
pub struct HistoryPage {
    pub entries: Vec<Version>,
    /// Continue from here (exclusive) for the next page.
    pub next: Option<i64>,
}

/// Result of a create.
#[derive(Debug)]
pub enum Created {
    New(Version),
    /// A conditional create matched this resource; nothing was written.
    Existing(Version),
}

/// Result of an update.
#[derive(Debug)]
pub struct Updated {
    pub version: Version,
    /// The resource did not exist (or was deleted) before.
    pub created: bool,
}

/// Result of a delete.
#[derive(Debug)]
pub enum Deleted {
    Now(Version),
    Already,
}

/// The FHIR resource store.
#[derive(Debug)]
pub struct ResourceStore {
    db: Database,
    sql: Sql,
    defs: &'static Definitions,
    /// Circular 30/2023's remote-eligible conditions (see [`crate::remote`]), once known.
    pub(crate) remote_eligible: std::sync::OnceLock<crate::remote::Eligible>,
}

fn version_from_row(row: &AnyRow, offset: usize) -> Result<Version, sqlx::Error> {
    let method: String = row.try_get(offset + 4)?;
    Ok(Version {
        resource_type: row.try_get(offset)?,
        id: row.try_get(offset + 1)?,
        version: row.try_get(offset + 2)?,
        last_updated: row.try_get(offset + 3)?,
        method: Method::parse(&method),
        deleted: row.try_get::<i64, _>(offset + 5)? != 0,
        content: row.try_get(offset + 6)?,
    })
}

/// Attempts for a write that lost a race to a concurrent writer of the same new id.
const WRITE_ATTEMPTS: usize = 5;

impl ResourceStore {
    pub fn new(db: Database, defs: &'static Definitions) -> Self {
        let sql = Sql::new(db.backend());
        Self {
            db,
            sql,
            defs,
            remote_eligible: std::sync::OnceLock::new(),
        }
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// The current version (possibly a deletion), or `None` if the resource never existed.
    pub async fn read(&self, rt: ResourceType, id: &str) -> Result<Option<Version>, EhrError> {
        let row = self
            .read_row(sqlx::query(&self.sql.read).bind(rt.as_str()).bind(id))
            .await?;
        Ok(row.map(|r| version_from_row(&r, 0)).transpose()?)
    }

    /// The row, if any, of a short read statement: on PostgreSQL through the read connections
    /// (no ping per use, see `sen_platform::db::Reader`), on SQLite through the reader pool.
    async fn read_row<'q>(
        &self,
        query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    ) -> Result<Option<sqlx::any::AnyRow>, EhrError> {
        match self.db.pg_read().await? {
            Some(mut reader) => {
                let row = query.fetch_optional(reader.conn()).await?;
                reader.done();
                Ok(row)
            }
            None => Ok(query.fetch_optional(self.db.reader()).await?),
        }
    }

    pub async fn vread(
        &self,
        rt: ResourceType,
        id: &str,
        version: i64,
    ) -> Result<Option<Version>, EhrError> {
        let row = self
            .read_row(
                sqlx::query(&self.sql.vread)
                    .bind(rt.as_str())
                    .bind(id)
                    .bind(version),
            )
            .await?;
        Ok(row.map(|r| version_from_row(&r, 0)).transpose()?)
    }

    /// A page of history, newest first. `before` is the continuation from the previous page.
    pub async fn history(
        &self,
        scope: &HistoryScope,
        since_micros: Option<i64>,
        before: Option<i64>,
        count: u32,
    ) -> Result<HistoryPage, EhrError> {
        if let HistoryScope::Instance(rt, id) = scope {
            let exists = sqlx::query(&self.sql.exists_any_version)
                .bind(rt.as_str())
                .bind(id.as_str())
                .fetch_optional(self.db.reader())
                .await?;
            if exists.is_none() {
                return Err(EhrError::NotFound {
                    resource_type: rt.as_str(),
                    id: id.clone(),
                });
            }
        }
        let since = since_micros.unwrap_or(i64::MIN);
        let before = before.unwrap_or(i64::MAX);
        let limit = i64::from(count) + 1;
        let query = match scope {
            HistoryScope::System => sqlx::query(&self.sql.history_system)
                .bind(since)
                .bind(before)
                .bind(limit),
            HistoryScope::Type(rt) => sqlx::query(&self.sql.history_type)
                .bind(since)
                .bind(before)
                .bind(limit)
                .bind(rt.as_str()),
            HistoryScope::Instance(rt, id) => sqlx::query(&self.sql.history_instance)
                .bind(since)
                .bind(before)
                .bind(limit)
                .bind(rt.as_str())
                .bind(id.as_str()),
        };
        let rows = query.fetch_all(self.db.reader()).await?;
        let mut entries = Vec::with_capacity(rows.len());
        let mut seqs = Vec::with_capacity(rows.len());
        for row in &rows {
            seqs.push(row.try_get::<i64, _>(0)?);
            entries.push(version_from_row(row, 1)?);
        }
        let next = if entries.len() > count as usize {
            entries.truncate(count as usize);
            seqs.get(count as usize - 1).copied()
        } else {
            None
        };
        Ok(HistoryPage { entries, next })
    }

    /// Current resources matching `criteria`, read through `conn`, at most `limit`, by id:
    /// (id, stored JSON).
    pub(crate) async fn find(
        &self,
        conn: &mut sqlx::AnyConnection,
        criteria: &Criteria,
        limit: usize,
    ) -> Result<Vec<(String, String)>, EhrError> {
        let found = self
            .page_on(conn, &criteria.request, &PageStart::First, limit)
            .await?;
        Ok(found
            .into_iter()
            .map(|(_, id, content)| (id, content))
            .collect())
    }

    /// One page of a search inside `tx` (a Bundle's GET entries see its writes).
    pub async fn search_page_in(
        &self,
        tx: &mut Tx,
        request: &crate::search::query::SearchRequest,
        limit: usize,
    ) -> Result<Vec<Found>, EhrError> {
        tx.flush().await?;
        self.page_on(tx, request, &PageStart::First, limit).await
    }

    /// Current resources matching `criteria` (conditional patch: at most `limit`).
    pub async fn search(
        &self,
        criteria: &Criteria,
        limit: usize,
    ) -> Result<Vec<(String, String)>, EhrError> {
        let mut conn = self.db.reader().acquire().await?;
        self.find(&mut conn, criteria, limit).await
    }

    /// Serialises conditional creates with the same criteria (PostgreSQL; SQLite has one writer).
    async fn lock_condition(&self, tx: &mut Tx, criteria: &Criteria) -> Result<(), EhrError> {
        if self.db.backend() == Backend::Postgres {
            let key = criteria.lock_key();
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(key)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    fn bind_version<'q>(
        &self,
        query: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>,
        v: &'q Version,
    ) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>> {
        query
            .bind(v.resource_type.as_str())
            .bind(v.id.as_str())
            .bind(v.version)
            .bind(v.last_updated)
            .bind(v.method.as_str())
            .bind(i64::from(v.deleted))
            .bind(v.content.as_str())
    }

    async fn write_history_and_index(
        &self,
        tx: &mut Tx,
        version: &Version,
        rows: Option<crate::search::extract::IndexRows>,
        rid: i64,
        indexed: bool,
    ) -> Result<(), EhrError> {
        if let Some(insert_history) = &self.sql.insert_history {
            self.bind_version(sqlx::query(insert_history), version)
                .execute(&mut **tx)
                .await?;
        }
        if let Some(rows) = &rows {
            tx.wrote(crate::audit::Written {
                reference: write::versioned(version),
                action: match (version.method, version.version) {
                    (Method::Post, _) | (_, 1) => "C",
                    _ => "U",
                },
                patients: crate::search::extract::compartment_patients(
                    &version.resource_type,
                    &version.id,
                    rows,
                ),
            });
        }
        self.replace_index_rows(tx, version, rows, rid, indexed)
            .await
    }

    /// Replaces the search index rows of a resource with those extracted from `tree`, the
    /// resource as a JSON tree (`$reindex`).
    pub(crate) async fn replace_index(
        &self,
        tx: &mut Tx,
        version: &Version,
        tree: &serde_json::Value,
        rid: i64,
        indexed: bool,
    ) -> Result<(), EhrError> {
        let rt = self
            .defs
            .resource_type(&version.resource_type)
            .ok_or_else(|| EhrError::UnknownType {
                name: version.resource_type.clone(),
            })?;
        let rows = crate::search::extract::extract(rt, tree);
        self.replace_index_rows(tx, version, Some(rows), rid, indexed)
            .await
    }

    /// Replaces the search index rows of a resource with `rows` (none for a deletion). Only a
    /// resource that was live before (`indexed`) has rows to delete; a new one (POST, or PUT
    /// of a new or deleted id) skips the deletes, and its rows stay held back in `tx` to be
    /// written with those of the other resources of the transaction.
    pub(crate) async fn replace_index_rows(
        &self,
        tx: &mut Tx,
        version: &Version,
        rows: Option<crate::search::extract::IndexRows>,
        rid: i64,
        indexed: bool,
    ) -> Result<(), EhrError> {
        if indexed {
            // Rows held back for this transaction go first, so the delete sees them all.
            tx.flush().await?;
            for sql in &self.sql.delete_index {
                sqlx::query(sql).bind(rid).execute(&mut **tx).await?;
            }
        }
        let Some(rows) = rows.filter(|_| !version.deleted) else {
            return Ok(());
        };
        tx.hold(&version.resource_type, &version.id, rid, rows)
            .await
    }
}

/// The search index tables.
const INDEX_TABLES: [&str; 6] = [
    "sp_string",
    "sp_token",
    "sp_reference",
    "sp_date",
    "sp_number",
    "sp_uri",
];

#[derive(Debug, Clone, Copy)]
enum Bind<'a> {
    Text(&'a str),
    Int(i64),
    Float(f64),
}

/// A statement with its index-row binds.
fn bind_rows<'q>(
    mut query: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>,
    binds: &[Bind<'q>],
) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>> {
    for bind in binds {
        query = match *bind {
            Bind::Text(t) => query.bind(t),
            Bind::Int(i) => query.bind(i),
            Bind::Float(f) => query.bind(f),
        };
    }
    query
}

/// The INSERT statements of held-back index rows, grouped by table.
struct Inserts<'a> {
    prefix: &'static str,
    /// (table, columns) → rows of binds
    tables: Vec<(&'static str, &'static str, Vec<Vec<Bind<'a>>>)>,
}

/// Bind values per statement on SQLite. sqlx looks every parameter's name up once per bound
/// value (sqlite3_bind_parameter_name), and SQLite finds a named parameter (`$1`) by scanning
/// the statement's list of names, so with named parameters binding grows with the square of
/// their number: at 4,000 that lookup was 30% of the writer's time, and still 11% at 240.
/// Index inserts therefore use anonymous `?` parameters on SQLite, whose name lookup is
/// immediate.
const SQLITE_BINDS_PER_STATEMENT: usize = 240;

/// Longest indexed text: PostgreSQL btree rows stop near 2.7 kB; longer values are stored
/// but not searchable.
fn long(s: &str) -> bool {
    s.len() > MAX_INDEXED_BYTES
}

impl<'a> Inserts<'a> {
    fn new(prefix: &'static str) -> Self {
        Self {
            prefix,
            tables: Vec::new(),
        }
    }

    /// Every index row of one resource.
    fn resource(
        &mut self,
        rt: &'a str,
        id: &'a str,
        rid: i64,
        rows: &'a crate::search::extract::IndexRows,
    ) {
        for (code, grp, folded, exact) in &rows.strings {
            if !long(folded) && !long(exact) {
                self.row(
                    "sp_string",
                    "folded, exact",
                    rt,
                    id,
                    rid,
                    code,
                    *grp,
                    vec![Bind::Text(folded), Bind::Text(exact)],
                );
            }
        }
        for (code, grp, system, value) in &rows.tokens {
            if !long(system) && !long(value) {
                self.row(
                    "sp_token",
                    "system, value",
                    rt,
                    id,
                    rid,
                    code,
                    *grp,
                    vec![Bind::Text(system), Bind::Text(value)],
                );
            }
        }
        for (code, grp, target_type, target_id, url) in &rows.references {
            if !long(url) {
                self.row(
                    "sp_reference",
                    "target_type, target_id, url",
                    rt,
                    id,
                    rid,
                    code,
                    *grp,
                    vec![
                        Bind::Text(target_type),
                        Bind::Text(target_id),
                        Bind::Text(url),
                    ],
                );
            }
        }
        for (code, grp, low, high) in &rows.dates {
            self.row(
                "sp_date",
                "low, high",
                rt,
                id,
                rid,
                code,
                *grp,
                vec![Bind::Int(*low), Bind::Int(*high)],
            );
        }
        for (code, grp, value, system, unit) in &rows.numbers {
            if value.is_finite() && !long(system) && !long(unit) {
                self.row(
                    "sp_number",
                    "value, system, unit",
                    rt,
                    id,
                    rid,
                    code,
                    *grp,
                    vec![Bind::Float(*value), Bind::Text(system), Bind::Text(unit)],
                );
            }
        }
        for (code, grp, value) in &rows.uris {
            if !long(value) {
                self.row(
                    "sp_uri",
                    "value",
                    rt,
                    id,
                    rid,
                    code,
                    *grp,
                    vec![Bind::Text(value)],
                );
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn row(
        &mut self,
        table: &'static str,
        columns: &'static str,
        rt: &'a str,
        id: &'a str,
        rid: i64,
        code: &'a str,
        grp: i64,
        values: Vec<Bind<'a>>,
    ) {
        let mut binds = vec![
            Bind::Text(rt),
            Bind::Text(id),
            Bind::Int(rid),
            Bind::Text(code),
            Bind::Int(grp),
        ];
        binds.extend(values);
        match self.tables.iter_mut().find(|(t, _, _)| *t == table) {
            Some((_, _, rows)) => rows.push(binds),
            None => self.tables.push((table, columns, vec![binds])),
        }
    }

    /// PostgreSQL's INSERT of every held row: one statement whose data-modifying CTEs insert
    /// each table's rows from one JSON bind (`json_to_recordset`). Its text depends only on
    /// which tables have rows, so it is prepared once per connection; multi-row `VALUES`
    /// with a bind per value made every flush a new statement of thousands of parameters
    /// for PostgreSQL to parse, analyze and plan, and sqlx to prepare in a round trip of its own.
    fn json_statement(self) -> (String, Vec<String>) {
        let mut parts = Vec::new();
        let mut binds = Vec::new();
        for (table, columns, rows) in self.tables {
            let types: Vec<String> = rows[0]
                .iter()
                .enumerate()
                .map(|(j, b)| {
                    let ty = match b {
                        Bind::Text(_) => "text",
                        Bind::Int(_) => "bigint",
                        Bind::Float(_) => "float8",
                    };
                    format!("c{j} {ty}")
                })
                .collect();
            let mut json = String::with_capacity(rows.len() * 128);
            json.push('[');
            for (i, row) in rows.iter().enumerate() {
                if i > 0 {
                    json.push(',');
                }
                json.push('{');
                for (j, bind) in row.iter().enumerate() {
                    if j > 0 {
                        json.push(',');
                    }
                    json.push_str(&format!("\"c{j}\":"));
                    let value = match bind {
                        Bind::Text(t) => serde_json::to_string(t),
                        Bind::Int(i) => Ok(i.to_string()),
                        Bind::Float(f) => serde_json::to_string(f),
                    };
                    json.push_str(&value.expect("text and finite numbers serialise"));
                }
                json.push('}');
            }
            json.push(']');
            binds.push(json);
            parts.push(format!(
                "INSERT INTO {}{table} (resource_type, id, rid, code, grp, {columns}) \
                 SELECT * FROM json_to_recordset(${}::json) AS r({})",
                self.prefix,
                binds.len(),
                types.join(", ")
            ));
        }
        let last = parts.pop().expect("one insert at least");
        let ctes: Vec<String> = parts
            .into_iter()
            .enumerate()
            .map(|(i, p)| format!("w{i} AS ({p})"))
            .collect();
        let sql = if ctes.is_empty() {
            last
        } else {
            format!("WITH {} {last}", ctes.join(", "))
        };
        (sql, binds)
    }

    /// SQLite's INSERT statements: multi-row `VALUES`, a table's rows in statements of at most
    /// SQLITE_BINDS_PER_STATEMENT anonymous parameters.
    fn statements(self) -> Vec<(String, Vec<Bind<'a>>)> {
        let mut out = Vec::new();
        for (table, columns, rows) in self.tables {
            let width = rows[0].len();
            let placeholders = format!("({})", vec!["?"; width].join(", "));
            for chunk in rows.chunks((SQLITE_BINDS_PER_STATEMENT / width).max(1)) {
                let sql = format!(
                    "INSERT INTO {}{table} (resource_type, id, rid, code, grp, {columns}) VALUES {}",
                    self.prefix,
                    vec![placeholders.as_str(); chunk.len()].join(", ")
                );
                out.push((sql, chunk.iter().flatten().copied().collect()));
            }
        }
        out
    }
}

fn check_if_match(if_match: Option<i64>, current: Option<&Version>) -> Result<(), EhrError> {
    match (if_match, current) {
        (None, _) => Ok(()),
        (Some(expected), Some(c)) if c.version == expected && !c.deleted => Ok(()),
        (Some(expected), current) => Err(EhrError::VersionConflict {
            expected: expected.to_string(),
            current: current.filter(|c| !c.deleted).map(|c| c.version),
        }),
    }
}

/// Longest token system or code that is indexed (PostgreSQL btree rows stop near 2.7 kB).
const MAX_INDEXED_BYTES: usize = 1024;

/// The column holding a resource row's integer key: assigned in increasing order, so the
/// index rows' per-resource index grows at its end (a sequence on PostgreSQL; on SQLite the
/// writer assigns it, since SQLite's own rowid may change on VACUUM).
pub(crate) fn resource_key(_backend: Backend) -> &'static str {
    "rid"
}
