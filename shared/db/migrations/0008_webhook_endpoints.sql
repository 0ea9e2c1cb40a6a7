-- Webhook endpoints a tenant registered, each with its own signing secrets. A job whose
-- callback_url is registered for its tenant is signed with that endpoint's secrets; any other
-- callback is signed with the stack's NOTIFY_WEBHOOK_SECRET.
CREATE TABLE webhook_endpoints (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id text NOT NULL,
    url text NOT NULL CHECK (length(url) BETWEEN 1 AND 2048),
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, url)
);

-- An endpoint's secrets: the current one has expires_at NULL (at most one per endpoint); a
-- rotated-out one keeps signing, next to the current one, until expires_at.
--
-- The secrets are stored as they are, because notify needs them to sign (an HMAC key cannot be
-- hashed like an API key). Production would encrypt them at rest, e.g. KMS envelope encryption
-- (a per-row data key wrapped by a KMS key); that is NOT done here.
CREATE TABLE webhook_secrets (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    endpoint_id bigint NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    secret text NOT NULL CHECK (secret LIKE 'whsec\_%'),
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz
);

CREATE UNIQUE INDEX webhook_secrets_one_current ON webhook_secrets (endpoint_id)
    WHERE expires_at IS NULL;
CREATE INDEX webhook_secrets_endpoint ON webhook_secrets (endpoint_id, created_at);
