//! The resource store: current versions, full history and the identifier index, on SQLite or
//! PostgreSQL through one code path.
//!
//! Every write is one database transaction (current row, history row, index rows), and
//! is acknowledged only after it commits. Index rows for a resource are written in one
//! multi-row statement, never one round trip per value. No SQL lives outside this module.

mod write;

use sen_platform::{Backend, Database};

use sqlx::{Any, Row, Transaction, any::AnyRow};
pub use write::Tx;

use crate::{
    criteria::{Criteria, TokenMatch},
    definitions::{Definitions, ResourceType},
    error::EhrError,
    resource::IncomingResource,
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

/// SQL with this backend's table names, built once.
#[derive(Debug)]
struct Sql {
    read: String,
    read_for_update: String,
    vread: String,
    insert_current: String,
    update_current: String,
    insert_history: String,
    delete_tokens: String,
    insert_tokens_prefix: String,
    find_base: String,
    token_table: String,
    history_system: String,
    history_type: String,
    history_instance: String,
    exists_any_version: String,
}

impl Sql {
    fn new(backend: Backend) -> Self {
        let (res, hist, tok, lock) = match backend {
            Backend::Postgres => (
                "ehr.resource",
                "ehr.resource_history",
                "ehr.token_index",
                " FOR UPDATE",
            ),
            Backend::Sqlite => (
                "ehr_resource",
                "ehr_resource_history",
                "ehr_token_index",
                "",
            ),
        };
        let cols = "resource_type, id, version_id, last_updated, method, deleted, content";
        Sql {
            read: format!("SELECT {cols} FROM {res} WHERE resource_type = $1 AND id = $2"),
            read_for_update: format!(
                "SELECT {cols} FROM {res} WHERE resource_type = $1 AND id = $2{lock}"
            ),
            vread: format!(
                "SELECT {cols} FROM {hist} WHERE resource_type = $1 AND id = $2 AND version_id = $3"
            ),
            insert_current: format!(
                "INSERT INTO {res} ({cols}) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (resource_type, id) DO NOTHING"
            ),
            update_current: format!(
                "UPDATE {res} SET version_id = $3, last_updated = $4, method = $5, deleted = $6, content = $7 \
                 WHERE resource_type = $1 AND id = $2 AND version_id = $8"
            ),
            insert_history: format!(
                "INSERT INTO {hist} ({cols}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
            ),
            delete_tokens: format!(
                "DELETE FROM {tok} WHERE resource_type = $1 AND resource_id = $2"
            ),
            insert_tokens_prefix: format!(
                "INSERT INTO {tok} (resource_type, resource_id, param, system, code) VALUES "
            ),
            find_base: format!(
                "SELECT r.id FROM {res} r WHERE r.resource_type = $1 AND r.deleted = 0"
            ),
            token_table: tok.to_string(),
            history_system: format!(
                "SELECT seq, {cols} FROM {hist} WHERE last_updated >= $1 AND seq < $2 ORDER BY seq DESC LIMIT $3"
            ),
            history_type: format!(
                "SELECT seq, {cols} FROM {hist} WHERE resource_type = $4 AND last_updated >= $1 AND seq < $2 \
                 ORDER BY seq DESC LIMIT $3"
            ),
            history_instance: format!(
                "SELECT seq, {cols} FROM {hist} WHERE resource_type = $4 AND id = $5 AND last_updated >= $1 \
                 AND seq < $2 ORDER BY seq DESC LIMIT $3"
            ),
            exists_any_version: format!("SELECT 1 FROM {res} WHERE resource_type = $1 AND id = $2"),
        }
    }
}

/// The FHIR resource store.
#[derive(Debug)]
pub struct ResourceStore {
    db: Database,
    sql: Sql,
    defs: &'static Definitions,
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
        Self { db, sql, defs }
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// The current version (possibly a deletion), or `None` if the resource never existed.
    pub async fn read(&self, rt: ResourceType, id: &str) -> Result<Option<Version>, EhrError> {
        let row = sqlx::query(&self.sql.read)
            .bind(rt.as_str())
            .bind(id)
            .fetch_optional(self.db.reader())
            .await?;
        Ok(row.map(|r| version_from_row(&r, 0)).transpose()?)
    }

    pub async fn vread(
        &self,
        rt: ResourceType,
        id: &str,
        version: i64,
    ) -> Result<Option<Version>, EhrError> {
        let row = sqlx::query(&self.sql.vread)
            .bind(rt.as_str())
            .bind(id)
            .bind(version)
            .fetch_optional(self.db.reader())
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

    /// Current (not deleted) resources of `rt` matching `criteria`, ordered by id, after the
    /// id `after`, at most `limit`: (id, stored JSON).
    pub async fn search(
        &self,
        rt: ResourceType,
        criteria: &Criteria,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, String)>, EhrError> {
        let mut conn = self.db.reader().acquire().await?;
        self.find_with(&mut *conn, rt, criteria, after, limit, true)
            .await
    }

    /// [`Self::search`] seen from inside `tx` (a Bundle's GET entries see its writes).
    pub async fn search_in(
        &self,
        tx: &mut Tx,
        rt: ResourceType,
        criteria: &Criteria,
        limit: usize,
    ) -> Result<Vec<(String, String)>, EhrError> {
        self.find_with(&mut **tx, rt, criteria, None, limit, true)
            .await
    }

    async fn find<'c, E>(
        &self,
        executor: E,
        rt: ResourceType,
        criteria: &Criteria,
        limit: usize,
    ) -> Result<Vec<String>, EhrError>
    where
        E: sqlx::Executor<'c, Database = Any>,
    {
        let rows = self
            .find_with(executor, rt, criteria, None, limit, false)
            .await?;
        Ok(rows.into_iter().map(|(id, _)| id).collect())
    }

    async fn find_with<'c, E>(
        &self,
        executor: E,
        rt: ResourceType,
        criteria: &Criteria,
        after: Option<&str>,
        limit: usize,
        with_content: bool,
    ) -> Result<Vec<(String, String)>, EhrError>
    where
        E: sqlx::Executor<'c, Database = Any>,
    {
        let mut sql = if with_content {
            self.sql
                .find_base
                .replacen("SELECT r.id ", "SELECT r.id, r.content ", 1)
        } else {
            self.sql.find_base.clone()
        };
        let mut binds: Vec<String> = vec![rt.as_str().to_string()];
        let next = |value: &str, binds: &mut Vec<String>| {
            binds.push(value.to_string());
            format!("${}", binds.len())
        };
        if let Some(after) = after {
            let p = next(after, &mut binds);
            sql.push_str(&format!(" AND r.id > {p}"));
        }
        if let Some(ids) = &criteria.ids {
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let list: Vec<String> = ids.iter().map(|id| next(id, &mut binds)).collect();
            sql.push_str(&format!(" AND r.id IN ({})", list.join(", ")));
        }
        for alternatives in &criteria.identifiers {
            let mut ors = Vec::new();
            for token in alternatives {
                let mut conds = Vec::new();
                match &token.system {
                    TokenMatch::Any => {}
                    TokenMatch::Exactly(s) => {
                        conds.push(format!("t.system = {}", next(s, &mut binds)))
                    }
                }
                match &token.code {
                    TokenMatch::Any => {}
                    TokenMatch::Exactly(c) => {
                        conds.push(format!("t.code = {}", next(c, &mut binds)))
                    }
                }
                ors.push(if conds.is_empty() {
                    "1 = 1".to_string()
                } else {
                    conds.join(" AND ")
                });
            }
            sql.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM {} t WHERE t.resource_type = r.resource_type AND t.resource_id = r.id \
                 AND t.param = 'identifier' AND (({})))",
                self.sql.token_table,
                ors.join(") OR (")
            ));
        }
        sql.push_str(&format!(" ORDER BY r.id LIMIT {limit}"));
        let mut query = sqlx::query(&sql);
        for value in &binds {
            query = query.bind(value.as_str());
        }
        let rows = query.fetch_all(executor).await?;
        let mut found = Vec::with_capacity(rows.len());
        for row in &rows {
            let content = if with_content {
                row.try_get::<String, _>(1)?
            } else {
                String::new()
            };
            found.push((row.try_get::<String, _>(0)?, content));
        }
        Ok(found)
    }

    /// Serialises conditional creates with the same criteria (PostgreSQL; SQLite has one writer).
    async fn lock_condition(
        &self,
        tx: &mut Transaction<'static, Any>,
        rt: ResourceType,
        criteria: &Criteria,
    ) -> Result<(), EhrError> {
        if self.db.backend() == Backend::Postgres {
            let key = criteria.lock_key(rt);
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
        tx: &mut Transaction<'static, Any>,
        version: &Version,
        resource: Option<&IncomingResource>,
    ) -> Result<(), EhrError> {
        self.bind_version(sqlx::query(&self.sql.insert_history), version)
            .execute(&mut **tx)
            .await?;
        let tokens = resource
            .map(|r| identifier_tokens(r, self.defs))
            .unwrap_or_default();
        self.replace_index(tx, version, &tokens).await
    }

    /// Replaces the index rows of a resource with `tokens` (one statement for all rows).
    async fn replace_index(
        &self,
        tx: &mut Transaction<'static, Any>,
        version: &Version,
        tokens: &[(String, String)],
    ) -> Result<(), EhrError> {
        if version.method != Method::Post {
            sqlx::query(&self.sql.delete_tokens)
                .bind(version.resource_type.as_str())
                .bind(version.id.as_str())
                .execute(&mut **tx)
                .await?;
        }
        if tokens.is_empty() {
            return Ok(());
        }
        let mut sql = self.sql.insert_tokens_prefix.clone();
        for i in 0..tokens.len() {
            let b = i * 5;
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!(
                "(${}, ${}, ${}, ${}, ${})",
                b + 1,
                b + 2,
                b + 3,
                b + 4,
                b + 5
            ));
        }
        let mut query = sqlx::query(&sql);
        for (system, code) in tokens {
            query = query
                .bind(version.resource_type.as_str())
                .bind(version.id.as_str())
                .bind("identifier")
                .bind(system.as_str())
                .bind(code.as_str());
        }
        query.execute(&mut **tx).await?;
        Ok(())
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

/// `identifier` values of a resource as (system, value); system is empty when absent.
fn identifier_tokens(resource: &IncomingResource, defs: &Definitions) -> Vec<(String, String)> {
    let has_identifier = defs
        .type_def(resource.resource_type)
        .elements
        .iter()
        .any(|e| e.name == "identifier");
    if !has_identifier {
        return Vec::new();
    }
    let values = match resource.property("identifier") {
        Some(serde_json::Value::Array(list)) => list,
        Some(single @ serde_json::Value::Object(_)) => vec![single],
        _ => return Vec::new(),
    };
    let mut tokens: Vec<(String, String)> = values
        .iter()
        .filter_map(|identifier| {
            let value = identifier.get("value")?.as_str()?;
            let system = identifier
                .get("system")
                .and_then(|s| s.as_str())
                .unwrap_or("");
            // Index keys must fit a btree row; longer values are stored but not searchable.
            if value.len() > MAX_INDEXED_BYTES || system.len() > MAX_INDEXED_BYTES {
                return None;
            }
            Some((system.to_string(), value.to_string()))
        })
        .collect();
    tokens.sort();
    tokens.dedup();
    tokens
}
