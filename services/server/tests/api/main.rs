//! The FHIR REST suite, against the real application on an ephemeral port, once on a fresh
//! SQLite file and once on a fresh PostgreSQL database (when `TEST_DATABASE_URL` is set;
//! required under `CI=true`).

use serde_json::{Value, json};

/// Runs each named test on both backends: `name::on_sqlite` and `name::on_postgres`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_sqlite() {
                super::$name(super::TestApp::sqlite().await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_postgres() {
                if let Some(app) = super::TestApp::postgres().await {
                    super::$name(app).await;
                }
            }
        }
    )*};
}

mod access;
mod audit;
mod bundles;
mod crud;
mod errors;
mod limits;
mod organizations;
mod patch;
mod profiles;
mod queries;
mod search;
mod support;
mod telehealth;
mod tokens;

/// Identifier system of the personal ID (CCCD).
pub const CCCD: &str = "http://fhir.ehealth.gov.vn/core/sid/national_id";

/// A patient of a Cao Lãnh ward, identified by `cccd`.
pub fn patient(cccd: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": CCCD, "value": cccd}],
        "name": [{"family": "Nguyễn", "given": ["Thị", "Hoa"]}],
        "gender": "female",
        "birthDate": "1990-04-30",
        "address": [{"line": ["12 Lê Lợi"], "city": "Cao Lãnh", "state": "Đồng Tháp"}]
    })
}
