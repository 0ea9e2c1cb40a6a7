-- API keys: each belongs to one tenant. A key reads cvk_<id>_<secret>; the id is public (it is
-- how a key is looked up, listed and revoked), the secret is shown once and only a SHA-256 hash
-- of the whole key is kept (see shared/apikeys.py). A revoked key stays, so that listings and
-- audits can still name it.
CREATE TABLE api_keys (
    id text PRIMARY KEY CHECK (id ~ '^[0-9a-f]{16}$'),
    tenant_id text NOT NULL,
    name text NOT NULL DEFAULT '',
    key_hash bytea NOT NULL CHECK (octet_length(key_hash) = 32),
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz,
    last_used_at timestamptz
);

CREATE INDEX api_keys_tenant ON api_keys (tenant_id, created_at);
