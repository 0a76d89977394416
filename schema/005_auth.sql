-- Accounts and sign-in (issue 12 item 1): what the seed schema lacks.
--
-- Sessions get a public handle (lists, revocation, logs), how they were
-- created and from where; revocation is a DELETE, announced on
-- veil_sessions so that live streams of the session can close.  New tables:
-- the server's own secret, one-time links (the first-run setup link and
-- magic links), GitHub sign-in flows in progress, API tokens and the GCRA
-- rate-limit buckets.  audit_log gets the client address of auth events.
--
-- Every secret a client holds (session id, link token, API token, OAuth
-- state) is stored only as its SHA-256: a copy of the database lets nobody
-- sign in.


-- ===========================================================================
-- Sessions
-- ===========================================================================

ALTER TABLE sessions
    -- The public handle of a session: "your sessions", revocation, logs.
    ADD COLUMN id          uuid NOT NULL DEFAULT gen_random_uuid(),
    -- How the user signed in.
    ADD COLUMN auth_method text NOT NULL DEFAULT 'password',
    -- The client address at sign-in and at the last recorded use.
    ADD COLUMN created_ip  inet,
    ADD COLUMN last_ip     inet,
    ADD CONSTRAINT sessions_id_key UNIQUE (id),
    ADD CONSTRAINT sessions_auth_method_valid CHECK (
        auth_method IN ('password', 'github', 'magic_link', 'setup'));

-- Ending a session deletes its row; live streams of that session close on it.
CREATE TRIGGER sessions_notify AFTER DELETE ON sessions
    FOR EACH ROW EXECUTE FUNCTION veil_notify_change('veil_sessions', 'id');


-- ===========================================================================
-- The server's secret
-- ===========================================================================

-- Keys shared by every process and node: 'server' keys the HMACs of the
-- sign-in forms' CSRF tokens and of the rate-limit keys (so that no address
-- is stored in clear).  Created by the application from its CSPRNG on first
-- start.
CREATE TABLE auth_secrets (
    name        text        PRIMARY KEY,
    secret      bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT auth_secrets_secret_length CHECK (length(secret) >= 32)
);


-- ===========================================================================
-- One-time links
-- ===========================================================================

-- The first-run setup link and magic sign-in links.  Single use: consumed
-- by UPDATE ... SET used_at ... WHERE used_at IS NULL RETURNING.
CREATE TABLE auth_tokens (
    token_hash    bytea       PRIMARY KEY,
    purpose       text        NOT NULL,
    -- The account a magic link signs in to; NULL for the setup link.
    user_id       uuid        REFERENCES users (id) ON DELETE CASCADE,
    -- SHA-256 of the pre-session cookie of the browser that asked for a
    -- magic link: only that browser may use it (ASVS 6.6.2).
    browser_hash  bytea,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    used_at       timestamptz,
    CONSTRAINT auth_tokens_hash_is_sha256 CHECK (length(token_hash) = 32),
    CONSTRAINT auth_tokens_purpose_valid CHECK (purpose IN ('setup', 'magic_link')),
    CONSTRAINT auth_tokens_magic_link_has_user CHECK (
        purpose <> 'magic_link' OR (user_id IS NOT NULL AND browser_hash IS NOT NULL))
);
CREATE INDEX auth_tokens_expires_at_idx ON auth_tokens (expires_at);
CREATE INDEX auth_tokens_user_id_idx ON auth_tokens (user_id) WHERE user_id IS NOT NULL;

-- GitHub sign-in flows under way: the state (hashed), the PKCE verifier and
-- the browser that started it.  Single use: taken with DELETE ... RETURNING.
CREATE TABLE auth_flows (
    state_hash     bytea       PRIMARY KEY,
    kind           text        NOT NULL DEFAULT 'github_signin',
    browser_hash   bytea       NOT NULL,
    pkce_verifier  text        NOT NULL,
    -- Where to go after signing in: a path on the dashboard.
    return_to      text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL,
    CONSTRAINT auth_flows_state_is_sha256 CHECK (length(state_hash) = 32),
    CONSTRAINT auth_flows_kind_valid CHECK (kind IN ('github_signin')),
    CONSTRAINT auth_flows_return_to_is_path CHECK (
        return_to IS NULL OR (return_to ~ '^/' AND return_to !~ '^//' AND return_to !~ '\\'))
);
CREATE INDEX auth_flows_expires_at_idx ON auth_flows (expires_at);


-- ===========================================================================
-- API tokens
-- ===========================================================================

-- Bearer tokens for scripts and the CLI.  A token acts for its user, on all
-- of the user's sites or on one, read-only or read-write, never beyond the
-- user's current roles.  Revocation sets revoked_at (the row stays for the
-- audit trail) and is announced on veil_api_tokens.
CREATE TABLE api_tokens (
    id              uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id         uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name            text        NOT NULL,
    token_hash      bytea       NOT NULL UNIQUE,
    -- The first characters of the token, to recognise it in lists.
    display_prefix  text        NOT NULL,
    -- NULL: every site the user may see.
    site_id         uuid        REFERENCES sites (id) ON DELETE CASCADE,
    read_only       boolean     NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- NULL: never expires.
    expires_at      timestamptz,
    -- Recorded in batches, at most once a minute per token.
    last_used_at    timestamptz,
    revoked_at      timestamptz,
    CONSTRAINT api_tokens_hash_is_sha256 CHECK (length(token_hash) = 32),
    CONSTRAINT api_tokens_name_length CHECK (length(name) BETWEEN 1 AND 100),
    CONSTRAINT api_tokens_expiry_after_creation CHECK (expires_at IS NULL OR expires_at > created_at)
);
CREATE INDEX api_tokens_user_id_idx ON api_tokens (user_id, created_at DESC, id DESC);

CREATE TRIGGER api_tokens_notify AFTER UPDATE OF revoked_at OR DELETE ON api_tokens
    FOR EACH ROW EXECUTE FUNCTION veil_notify_change('veil_api_tokens', 'id');


-- ===========================================================================
-- Rate limits
-- ===========================================================================

-- GCRA buckets shared by every process and node: a request is allowed when
-- the bucket's theoretical arrival time, moved on by one emission interval,
-- stays within the burst.  key = limit name, tier and an HMAC of the limited
-- value (an address, an account), never the value itself.
CREATE TABLE rate_limits (
    key  text        PRIMARY KEY,
    tat  timestamptz NOT NULL
);
CREATE INDEX rate_limits_tat_idx ON rate_limits (tat);


-- ===========================================================================
-- Audit log
-- ===========================================================================

-- The client address of auth events (sign-in, failures, sign-out, tokens,
-- setup).  Readable by global administrators only.
ALTER TABLE audit_log ADD COLUMN ip inet;
