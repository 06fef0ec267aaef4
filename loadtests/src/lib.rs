//! Shared by Sen's load tools: the deterministic city data the search benchmark loads and queries.

pub mod city;

/// The `Authorization` header value the load tools send: `Bearer $SEN_LOAD_TOKEN` (the
/// scripts mint a system token with `sen token --role system`).
pub fn authorization() -> String {
    static VALUE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VALUE
        .get_or_init(|| {
            format!(
                "Bearer {}",
                std::env::var("SEN_LOAD_TOKEN").unwrap_or_default()
            )
        })
        .clone()
}
