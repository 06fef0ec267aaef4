

-- The current version of every resource (deleted ones included, with deleted = 1).
-- content is the JSON text exactly as served; TEXT, not JSONB, so that decimals and
-- property order survive.
CREATE TABLE ehr_resource (
    resource_type TEXT NOT NULL,
    id TEXT NOT NULL,
    version_id BIGINT NOT NULL,
    last_updated BIGINT NOT NULL,          -- microseconds since the Unix epoch
    method TEXT NOT NULL,                  -- POST | PUT | DELETE
    deleted BIGINT NOT NULL DEFAULT 0,
    content TEXT NOT NULL,
    PRIMARY KEY (resource_type, id)
);

-- Every version ever written; seq orders the system-wide history and pages it.
CREATE TABLE ehr_resource_history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    resource_type TEXT NOT NULL,
    id TEXT NOT NULL,
    version_id BIGINT NOT NULL,
    last_updated BIGINT NOT NULL,
    method TEXT NOT NULL,
    deleted BIGINT NOT NULL DEFAULT 0,
    content TEXT NOT NULL,
    UNIQUE (resource_type, id, version_id)
);
CREATE INDEX resource_history_type_seq ON ehr_resource_history (resource_type, seq);
CREATE INDEX resource_history_instance_seq ON ehr_resource_history (resource_type, id, seq);

-- Token index of current versions (identifier today; the search engine adds parameters).
CREATE TABLE ehr_token_index (
    resource_type TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    param TEXT NOT NULL,
    system TEXT NOT NULL DEFAULT '',
    code TEXT NOT NULL
);
CREATE INDEX token_index_lookup ON ehr_token_index (resource_type, param, code, system);
CREATE INDEX token_index_resource ON ehr_token_index (resource_type, resource_id);
