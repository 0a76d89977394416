-- Veil: the initial data model (DESIGN.md §3).
--
-- Applied by veil/store/migrate.py as ONE multi-statement string inside ONE
-- transaction, with no parameter processing, and recorded in
-- schema_migrations (which migrate.py creates).  Hence: no transaction
-- control, no CREATE INDEX CONCURRENTLY, no psql meta-commands, and plain
-- CREATE (not IF NOT EXISTS) so that a database in an unexpected state makes
-- the migration fail loudly instead of half-applying.
--
-- Core PostgreSQL >= 14 only: no extensions.  gen_random_uuid() is core
-- since 13; inet with the core GiST inet_ops class serves prefix lookups.
--
-- Conventions: snake_case; every time is timestamptz; entities have uuid
-- keys from gen_random_uuid(); high-volume logs have bigint ids; closed sets
-- of values are text with a CHECK; every table with an updated_at column has
-- the veil_touch_updated_at trigger; caches are kept current by the
-- veil_notify_change triggers (channels listed in docs/data-model.md).
--
-- Objects are created unqualified, in the first schema of the search_path
-- (normally public).


-- ===========================================================================
-- Shared trigger functions
-- ===========================================================================

-- BEFORE UPDATE: set updated_at to now() when anything else in the row
-- changed.  A no-op UPDATE leaves updated_at alone.  Rows are compared as
-- jsonb so that a column type without an equality operator (e.g. json) added
-- by a later migration cannot break the comparison.
CREATE FUNCTION veil_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    IF (to_jsonb(NEW) - 'updated_at') IS DISTINCT FROM (to_jsonb(OLD) - 'updated_at') THEN
        NEW.updated_at := now();
    END IF;
    RETURN NEW;
END
$fn$;

-- AFTER INSERT/UPDATE/DELETE: tell every Veil process that something changed.
--
--   TG_ARGV[0]  the channel
--   TG_ARGV[1]  the column whose value is the payload (default 'id'); ignored
--               for statement-level triggers, whose payload is ''.
--
-- Row level: the payload is the key of the changed row as text.  An UPDATE
-- that changes the key sends both the new and the old key; an UPDATE that
-- changes nothing but updated_at sends nothing.  pg_notify inside the
-- changing transaction means delivery happens on commit, and PostgreSQL
-- folds identical (channel, payload) pairs of one transaction into one.
CREATE FUNCTION veil_notify_change() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    channel  text := TG_ARGV[0];
    key      text := coalesce(TG_ARGV[1], 'id');
    new_row  jsonb;
    old_row  jsonb;
    new_key  text;
    old_key  text;
BEGIN
    IF TG_LEVEL = 'STATEMENT' THEN
        PERFORM pg_notify(channel, '');
        RETURN NULL;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        new_row := to_jsonb(NEW);
        new_key := new_row ->> key;
    END IF;
    IF TG_OP <> 'INSERT' THEN
        old_row := to_jsonb(OLD);
        old_key := old_row ->> key;
    END IF;
    IF TG_OP = 'UPDATE' AND (new_row - 'updated_at') = (old_row - 'updated_at') THEN
        RETURN NULL;
    END IF;
    IF new_key IS NOT NULL THEN
        PERFORM pg_notify(channel, new_key);
    END IF;
    IF old_key IS NOT NULL AND old_key IS DISTINCT FROM new_key THEN
        PERFORM pg_notify(channel, old_key);
    END IF;
    RETURN NULL;
END
$fn$;


-- ===========================================================================
-- Accounts and sessions
-- ===========================================================================

-- Dashboard accounts: local (email + password hash), GitHub, or both.
CREATE TABLE users (
    id             uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    -- Kept as entered; unique case-insensitively (users_email_lower_key).
    email          text,
    display_name   text,
    -- PHC string of scrypt or argon2 ("$scrypt$...", "$argon2id$...");
    -- NULL for accounts that sign in with GitHub only.
    password_hash  text,
    github_id      bigint      UNIQUE,
    github_login   text,
    is_admin       boolean     NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    last_login_at  timestamptz,
    -- Set: the account may not sign in and its sessions are refused.
    disabled_at    timestamptz,
    CONSTRAINT users_has_identity CHECK (email IS NOT NULL OR github_id IS NOT NULL),
    CONSTRAINT users_email_format CHECK (
        email IS NULL OR (length(email) <= 320 AND email ~ '^[^@\s]+@[^@\s]+$')),
    CONSTRAINT users_password_hash_format CHECK (
        password_hash IS NULL OR password_hash LIKE '$%'),
    CONSTRAINT users_github_login_needs_id CHECK (github_login IS NULL OR github_id IS NOT NULL)
);
CREATE UNIQUE INDEX users_email_lower_key ON users (lower(email));

-- Server-side sessions.  The cookie carries a random session id; only its
-- SHA-256 is stored, so a copy of the database does not let anyone sign in.
CREATE TABLE sessions (
    id_hash       bytea       PRIMARY KEY,
    user_id       uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- Per-session secret the CSRF tokens are derived from (HMAC).  The
    -- default is 32 bytes from two gen_random_uuid() (244 random bits from
    -- the server's strong RNG); the application may supply its own.
    csrf_secret   bytea       NOT NULL
                  DEFAULT (uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid())),
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    -- Truncated by the writer; shown in "your sessions".
    user_agent    text,
    CONSTRAINT sessions_id_hash_is_sha256 CHECK (length(id_hash) = 32),
    CONSTRAINT sessions_csrf_secret_length CHECK (length(csrf_secret) >= 16)
);
-- The hourly clean-up: DELETE FROM sessions WHERE expires_at < now().
CREATE INDEX sessions_expires_at_idx ON sessions (expires_at);
-- "Sign out everywhere" and the cascade from users.
CREATE INDEX sessions_user_id_idx ON sessions (user_id);

CREATE TRIGGER users_touch BEFORE UPDATE ON users
    FOR EACH ROW EXECUTE FUNCTION veil_touch_updated_at();


-- ===========================================================================
-- Sites
-- ===========================================================================

CREATE TABLE sites (
    id                 uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    -- Deleting a user who still owns sites is refused: transfer or delete
    -- the sites first.
    owner_id           uuid        NOT NULL REFERENCES users (id) ON DELETE RESTRICT,
    -- The host name served, lowercase, IDNs in their xn-- form, no
    -- trailing dot.
    domain             text        NOT NULL UNIQUE,
    -- The origin: scheme://host[:port], no path (IPv6 in brackets).
    upstream           text        NOT NULL,
    -- pending -> active (DNS verified) -> ssl_provisioning -> live.
    -- Certificates may be issued on demand only for active,
    -- ssl_provisioning and live.
    status             text        NOT NULL DEFAULT 'pending',
    -- Why the status is what it is, e.g. the ACME problem detail for
    -- 'error' or what DNS returned for 'pending'.
    status_detail      text,
    -- Expected in the TXT record at _veil.<domain>.
    dns_token          text        NOT NULL DEFAULT replace(gen_random_uuid()::text, '-', ''),
    dns_checked_at     timestamptz,
    dns_verified_at    timestamptz,
    mode               text        NOT NULL DEFAULT 'block',
    paranoia_level     smallint    NOT NULL DEFAULT 1,
    maintenance        boolean     NOT NULL DEFAULT false,
    -- Serve plain HTTP instead of redirecting it to HTTPS.
    allow_plain_http   boolean     NOT NULL DEFAULT false,
    -- Verify the origin's certificate when upstream is https://.
    origin_tls_verify  boolean     NOT NULL DEFAULT true,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT sites_domain_lowercase CHECK (domain = lower(domain)),
    CONSTRAINT sites_domain_format CHECK (
        length(domain) <= 253
        AND domain ~ '^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'
        AND domain !~ '^[0-9.]+$'),
    CONSTRAINT sites_upstream_format CHECK (upstream ~ '^https?://[^\s/?#@]+$'),
    CONSTRAINT sites_status_valid CHECK (
        status IN ('pending', 'active', 'ssl_provisioning', 'live', 'error', 'disabled')),
    CONSTRAINT sites_dns_token_format CHECK (dns_token ~ '^[A-Za-z0-9_-]{16,128}$'),
    CONSTRAINT sites_mode_valid CHECK (mode IN ('block', 'monitor')),
    CONSTRAINT sites_paranoia_level_range CHECK (paranoia_level BETWEEN 1 AND 4)
);
CREATE INDEX sites_owner_id_idx ON sites (owner_id);
-- The DNS worker: sites still waiting for their DNS, least recently checked first.
CREATE INDEX sites_dns_pending_idx ON sites (dns_checked_at NULLS FIRST)
    WHERE status IN ('pending', 'error');

-- Per-user authorization on site-scoped routes.  Every site's owner has an
-- 'owner' row, kept by the sites_owner_membership trigger below.
CREATE TABLE site_members (
    site_id     uuid        NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    user_id     uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role        text        NOT NULL DEFAULT 'viewer',
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site_id, user_id),
    CONSTRAINT site_members_role_valid CHECK (role IN ('owner', 'admin', 'viewer'))
);
CREATE INDEX site_members_user_id_idx ON site_members (user_id);

-- A new site, or a site whose owner_id changed, gets an 'owner' membership
-- for its owner.  (A previous owner keeps the row it had; demoting or
-- removing it is the application's decision.)
CREATE FUNCTION veil_site_owner_membership() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.owner_id = OLD.owner_id THEN
        RETURN NULL;
    END IF;
    INSERT INTO site_members (site_id, user_id, role)
    VALUES (NEW.id, NEW.owner_id, 'owner')
    ON CONFLICT (site_id, user_id) DO UPDATE SET role = 'owner'
        WHERE site_members.role <> 'owner';
    RETURN NULL;
END
$fn$;

CREATE TRIGGER sites_owner_membership AFTER INSERT OR UPDATE OF owner_id ON sites
    FOR EACH ROW EXECUTE FUNCTION veil_site_owner_membership();
CREATE TRIGGER sites_touch BEFORE UPDATE ON sites
    FOR EACH ROW EXECUTE FUNCTION veil_touch_updated_at();
CREATE TRIGGER sites_notify AFTER INSERT OR UPDATE OR DELETE ON sites
    FOR EACH ROW EXECUTE FUNCTION veil_notify_change('veil_sites', 'id');
CREATE TRIGGER site_members_notify AFTER INSERT OR UPDATE OR DELETE ON site_members
    FOR EACH ROW EXECUTE FUNCTION veil_notify_change('veil_sites', 'site_id');


-- ===========================================================================
-- Request log: range-partitioned by month on ts
-- ===========================================================================

-- Identity columns are not allowed on partitioned tables in PostgreSQL 14,
-- so the id comes from this sequence.  Writers should take ids in blocks
-- with veil_request_log_next_ids(n) so that the id an SSE event carries
-- before the row is flushed is the id the row gets.
CREATE SEQUENCE request_log_id_seq AS bigint;

-- One row per request.  Written only by the Flusher with COPY, in batches;
-- never updated; whole months are dropped past retention.
--
-- Only id, ts and blocked are NOT NULL: a request refused before its head
-- was parsed (e.g. a smuggling attempt) still gets a row, and one bad value
-- must not make a whole COPY batch fail.  Text columns are truncated by the
-- writer.
--
-- site_id has no foreign key: a FK would add a lookup per inserted row and
-- would make deleting a site scan every partition; rows of a deleted site
-- simply age out.  It is NULL for requests to unknown hosts.
--
-- Primary key (id, ts): a partitioned table's unique keys must contain the
-- partition key.  The ids alone are unique by construction (one sequence);
-- the key gives each row an address, and its index (led by id) serves the
-- global "id > cursor" and "ORDER BY id DESC LIMIT n" reads.
CREATE TABLE request_log (
    id              bigint      NOT NULL DEFAULT nextval('request_log_id_seq'),
    ts              timestamptz NOT NULL,
    site_id         uuid,
    host            text,
    method          text,
    path            text,
    query           text,
    status          smallint,
    bytes_in        bigint,
    bytes_out       bigint,
    duration_ms     real,
    -- Time spent waiting for the origin; NULL when not forwarded.
    origin_ms       real,
    client_ip       inet,
    -- The X-Request-Id Veil set (shown on block and error pages).
    request_id      text,
    user_agent      text,
    -- The WAF's outcome (§6): classification such as 'benign',
    -- 'suspicious', 'malicious'; which stage decided; its confidence 0..1;
    -- the attack type; whether the request was refused.
    classification  text,
    classifier      text,
    confidence      real,
    attack_type     text,
    blocked         boolean     NOT NULL DEFAULT false,
    PRIMARY KEY (id, ts)
) PARTITION BY RANGE (ts);

ALTER SEQUENCE request_log_id_seq OWNED BY request_log.id;

-- Indexes on the parent are created on every partition, present and future.
-- Dashboard: a site's recent requests, by time.
CREATE INDEX request_log_site_ts_idx ON request_log (site_id, ts DESC);
-- SSE Last-Event-ID resume: WHERE site_id = $1 AND id > $2 ORDER BY id.
CREATE INDEX request_log_site_id_idx ON request_log (site_id, id);
-- "What happened to request X?" from a block or error page.
CREATE INDEX request_log_request_id_idx ON request_log (request_id);
-- Everything from one address (btree also serves "client_ip << net").
CREATE INDEX request_log_client_ip_idx ON request_log (client_ip, ts);
-- A site's attacks; small because most traffic is benign.
CREATE INDEX request_log_attacks_idx ON request_log (site_id, ts DESC)
    WHERE blocked OR attack_type IS NOT NULL;

-- Ids for the next n request_log rows, ascending.  Not contiguous when
-- several processes draw at once, but unique, and never reused.
CREATE FUNCTION veil_request_log_next_ids(n integer) RETURNS SETOF bigint
LANGUAGE plpgsql VOLATILE AS $fn$
BEGIN
    IF n IS NULL OR n < 1 OR n > 1000000 THEN
        RAISE EXCEPTION 'veil_request_log_next_ids: n must be between 1 and 1000000, not %', n
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY SELECT nextval('request_log_id_seq') FROM generate_series(1, n);
END
$fn$;

-- The partitions of request_log with their bounds (NULL for MINVALUE,
-- MAXVALUE or a DEFAULT partition) and their size on disk, oldest first.
-- Bounds are read back from pg_get_expr(); the function pins DateStyle and
-- TimeZone so that reading them never depends on the caller's settings.
CREATE FUNCTION veil_request_log_partitions()
RETURNS TABLE (partition regclass, partition_name text,
               range_start timestamptz, range_end timestamptz, total_bytes bigint)
LANGUAGE sql STABLE
SET datestyle = 'ISO, MDY'
SET timezone = 'UTC'
AS $fn$
    SELECT c.oid::regclass,
           c.relname::text,
           (regexp_match(b.spec, $re$FROM \('([^']*)'\)$re$))[1]::timestamptz,
           (regexp_match(b.spec, $re$TO \('([^']*)'\)$re$))[1]::timestamptz,
           pg_total_relation_size(c.oid)
    FROM pg_inherits i
    JOIN pg_class c ON c.oid = i.inhrelid
    CROSS JOIN LATERAL (SELECT pg_get_expr(c.relpartbound, c.oid) AS spec) b
    WHERE i.inhparent = 'request_log'::regclass
    ORDER BY 3 NULLS FIRST, 2
$fn$;

-- Partition maintenance (run daily by the partitions worker and once below).
--
-- Months are calendar months in UTC.  Creates request_log_yYYYYmMM for the
-- month of `at` and the month after unless a partition already covers that
-- range; drops every partition whose whole range ends at or before the start
-- of at's month minus `retention_months` months (so retention 6 in July keeps
-- January to July and drops December and older).  Returns one row per
-- change: ('created' | 'dropped', partition name).  Idempotent: a second run
-- returns nothing.
--
-- Concurrent runs are serialised by a transaction-level advisory lock.
-- Creating or dropping a partition takes an ACCESS EXCLUSIVE lock on
-- request_log for a moment; lock_timeout (10 s) makes the run fail rather
-- than queue the flusher's COPYs behind a long dashboard query, and the
-- worker retries later.
CREATE FUNCTION veil_request_log_maintain(retention_months integer, at timestamptz DEFAULT now())
RETURNS TABLE (action text, partition_name text)
LANGUAGE plpgsql VOLATILE
SET datestyle = 'ISO, MDY'
SET timezone = 'UTC'
SET lock_timeout = '10s'
AS $fn$
DECLARE
    parent_schema text;
    month_start   timestamptz;
    cutoff        timestamptz;
    lo            timestamptz;
    hi            timestamptz;
    name          text;
    p             record;
BEGIN
    IF retention_months IS NULL OR retention_months < 0 THEN
        RAISE EXCEPTION 'veil_request_log_maintain: retention_months must be >= 0, not %',
            coalesce(retention_months::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF at IS NULL THEN
        RAISE EXCEPTION 'veil_request_log_maintain: at must not be NULL'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- "veilpart"
    PERFORM pg_advisory_xact_lock(8531317004373881460);

    SELECT n.nspname INTO parent_schema
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = 'request_log'::regclass;

    month_start := date_trunc('month', at);   -- in UTC: see SET timezone

    FOR i IN 0..1 LOOP
        lo := month_start + make_interval(months => i);
        hi := lo + interval '1 month';
        name := 'request_log_y' || to_char(lo, 'YYYY"m"MM');
        IF NOT EXISTS (
            SELECT 1 FROM veil_request_log_partitions() AS existing
            WHERE existing.range_start < hi AND existing.range_end > lo
        ) THEN
            EXECUTE format('CREATE TABLE %I.%I PARTITION OF request_log FOR VALUES FROM (%L) TO (%L)',
                           parent_schema, name, lo, hi);
            action := 'created';
            partition_name := name;
            RETURN NEXT;
        END IF;
    END LOOP;

    cutoff := month_start - make_interval(months => retention_months);
    FOR p IN
        SELECT existing.partition, existing.partition_name
        FROM veil_request_log_partitions() AS existing
        WHERE existing.range_end <= cutoff
    LOOP
        EXECUTE format('DROP TABLE %s', p.partition);
        action := 'dropped';
        partition_name := p.partition_name;
        RETURN NEXT;
    END LOOP;
END
$fn$;


-- ===========================================================================
-- WAF: decisions, intelligence, behaviour, profiles, rules, threats
-- ===========================================================================

-- IP decisions: what the pipeline's first stage does with an address or
-- network.  site_id NULL = every site.  Expired rows are ignored by readers
-- and deleted by the decisions-expiry worker.
CREATE TABLE decisions (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    site_id     uuid        REFERENCES sites (id) ON DELETE CASCADE,
    -- An address is a /32 or /128; networks are allowed; host bits must be
    -- zero (10.0.0.0/8, not 10.1.2.3/8).
    target      inet        NOT NULL,
    type        text        NOT NULL,
    reason      text        NOT NULL DEFAULT '',
    source      text        NOT NULL,
    created_by  uuid        REFERENCES users (id) ON DELETE SET NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- NULL: until removed.
    expires_at  timestamptz,
    CONSTRAINT decisions_target_is_network CHECK (target = network(target)),
    CONSTRAINT decisions_type_valid CHECK (
        type IN ('ban', 'block', 'throttle', 'log_only', 'scrutinize')),
    CONSTRAINT decisions_source_valid CHECK (
        source IN ('manual', 'agent', 'feed', 'behaviour', 'api')),
    CONSTRAINT decisions_expiry_after_creation CHECK (expires_at IS NULL OR expires_at > created_at)
);
-- Containment: WHERE target >>= $ip (which decisions cover this address).
CREATE INDEX decisions_target_gist ON decisions USING gist (target inet_ops);
CREATE INDEX decisions_expires_at_idx ON decisions (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX decisions_site_id_idx ON decisions (site_id, created_at DESC);

CREATE TRIGGER decisions_notify AFTER INSERT OR UPDATE OR DELETE ON decisions
    FOR EACH ROW EXECUTE FUNCTION veil_notify_change('veil_decisions', 'id');

-- What the agent loop did and why (§6).
CREATE TABLE agent_log (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ts           timestamptz NOT NULL DEFAULT now(),
    -- NULL: not about one site.
    site_id      uuid        REFERENCES sites (id) ON DELETE CASCADE,
    -- e.g. 'decision.created', 'reputation.updated', 'threat.recorded'.
    action       text        NOT NULL,
    -- What it acted on, e.g. an address.
    target       text,
    detail       jsonb       NOT NULL DEFAULT '{}',
    decision_id  uuid        REFERENCES decisions (id) ON DELETE SET NULL
);
CREATE INDEX agent_log_site_ts_idx ON agent_log (site_id, ts DESC);
CREATE INDEX agent_log_ts_idx ON agent_log (ts);
CREATE INDEX agent_log_decision_id_idx ON agent_log (decision_id) WHERE decision_id IS NOT NULL;

-- Per-address reputation, maintained by the agent loop.
CREATE TABLE ip_reputation (
    ip          inet        PRIMARY KEY,
    -- 0 = nothing known against it, 100 = worst.
    score       real        NOT NULL DEFAULT 0,
    hits        bigint      NOT NULL DEFAULT 0,
    blocks      bigint      NOT NULL DEFAULT 0,
    first_seen  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now(),
    tags        text[]      NOT NULL DEFAULT '{}',
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT ip_reputation_single_address CHECK (
        masklen(ip) = CASE family(ip) WHEN 4 THEN 32 ELSE 128 END),
    CONSTRAINT ip_reputation_score_range CHECK (score >= 0 AND score <= 100),
    CONSTRAINT ip_reputation_counts CHECK (hits >= 0 AND blocks >= 0)
);
CREATE INDEX ip_reputation_score_idx ON ip_reputation (score DESC);
CREATE INDEX ip_reputation_last_seen_idx ON ip_reputation (last_seen);
CREATE TRIGGER ip_reputation_touch BEFORE UPDATE ON ip_reputation
    FOR EACH ROW EXECUTE FUNCTION veil_touch_updated_at();

-- Behaviour windows (§6 stage 2) per site and address, written in batches
-- from the in-memory counters; pruned by last_seen.
CREATE TABLE behavioral_sessions (
    site_id         uuid        NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    client_ip       inet        NOT NULL,
    window_start    timestamptz NOT NULL,
    window_seconds  integer     NOT NULL DEFAULT 60,
    request_count   integer     NOT NULL DEFAULT 0,
    error_count     integer     NOT NULL DEFAULT 0,
    unique_paths    integer     NOT NULL DEFAULT 0,
    auth_failures   integer     NOT NULL DEFAULT 0,
    score           real        NOT NULL DEFAULT 0,
    last_seen       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site_id, client_ip, window_start),
    CONSTRAINT behavioral_sessions_window_positive CHECK (window_seconds > 0),
    CONSTRAINT behavioral_sessions_counts CHECK (
        request_count >= 0 AND error_count >= 0 AND unique_paths >= 0 AND auth_failures >= 0)
);
CREATE INDEX behavioral_sessions_last_seen_idx ON behavioral_sessions (last_seen);
CREATE INDEX behavioral_sessions_client_ip_idx ON behavioral_sessions (client_ip, window_start DESC);

-- Learned shape of each endpoint (§6 stage 3).  mode 'skip' skips the
-- signature stage for the endpoint, 'deep' forces deep inspection.
CREATE TABLE endpoint_profiles (
    site_id             uuid        NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    -- Upper case; '*' for any method.
    method              text        NOT NULL,
    -- Normalised path, e.g. /api/users/{id}.
    path_pattern        text        NOT NULL,
    request_count       bigint      NOT NULL DEFAULT 0,
    avg_request_bytes   real        NOT NULL DEFAULT 0,
    max_request_bytes   bigint      NOT NULL DEFAULT 0,
    avg_response_bytes  real        NOT NULL DEFAULT 0,
    max_response_bytes  bigint      NOT NULL DEFAULT 0,
    avg_duration_ms     real        NOT NULL DEFAULT 0,
    -- Share of responses with status >= 400, 0..1.
    error_rate          real        NOT NULL DEFAULT 0,
    mode                text        NOT NULL DEFAULT 'normal',
    first_seen          timestamptz NOT NULL DEFAULT now(),
    last_seen           timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site_id, method, path_pattern),
    CONSTRAINT endpoint_profiles_method_format CHECK (method <> '' AND method = upper(method)),
    CONSTRAINT endpoint_profiles_path_pattern_nonempty CHECK (path_pattern <> ''),
    CONSTRAINT endpoint_profiles_error_rate_range CHECK (error_rate >= 0 AND error_rate <= 1),
    CONSTRAINT endpoint_profiles_counts CHECK (
        request_count >= 0 AND max_request_bytes >= 0 AND max_response_bytes >= 0),
    CONSTRAINT endpoint_profiles_mode_valid CHECK (mode IN ('normal', 'skip', 'deep'))
);
CREATE TRIGGER endpoint_profiles_touch BEFORE UPDATE ON endpoint_profiles
    FOR EACH ROW EXECUTE FUNCTION veil_touch_updated_at();
-- Only the mode matters to the hot path, and the counters change all the
-- time: notify when a non-normal profile appears or disappears, or a mode
-- changes.
CREATE TRIGGER endpoint_profiles_notify_insert AFTER INSERT ON endpoint_profiles
    FOR EACH ROW WHEN (NEW.mode <> 'normal')
    EXECUTE FUNCTION veil_notify_change('veil_endpoint_profiles', 'site_id');
CREATE TRIGGER endpoint_profiles_notify_update AFTER UPDATE ON endpoint_profiles
    FOR EACH ROW WHEN (OLD.mode IS DISTINCT FROM NEW.mode OR OLD.site_id IS DISTINCT FROM NEW.site_id)
    EXECUTE FUNCTION veil_notify_change('veil_endpoint_profiles', 'site_id');
CREATE TRIGGER endpoint_profiles_notify_delete AFTER DELETE ON endpoint_profiles
    FOR EACH ROW WHEN (OLD.mode <> 'normal')
    EXECUTE FUNCTION veil_notify_change('veil_endpoint_profiles', 'site_id');

-- Versioned rule sets per site.  A new version is a new row; at most one
-- version of a site is active.  To switch, deactivate the old row and then
-- activate the new one in two statements of one transaction (the partial
-- unique index is checked row by row).
CREATE TABLE rules (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    site_id     uuid        NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    version     integer     NOT NULL,
    body        jsonb       NOT NULL,
    comment     text        NOT NULL DEFAULT '',
    created_by  uuid        REFERENCES users (id) ON DELETE SET NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    is_active   boolean     NOT NULL DEFAULT false,
    UNIQUE (site_id, version),
    CONSTRAINT rules_version_positive CHECK (version > 0),
    CONSTRAINT rules_body_is_object CHECK (jsonb_typeof(body) = 'object')
);
CREATE UNIQUE INDEX rules_one_active_per_site ON rules (site_id) WHERE is_active;
CREATE TRIGGER rules_notify AFTER INSERT OR UPDATE OR DELETE ON rules
    FOR EACH ROW EXECUTE FUNCTION veil_notify_change('veil_rules', 'site_id');

-- The shared rule library sites pick rules from.
CREATE TABLE hub_rules (
    id           uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    name         text        NOT NULL UNIQUE,
    category     text        NOT NULL,
    description  text        NOT NULL DEFAULT '',
    body         jsonb       NOT NULL,
    version      integer     NOT NULL DEFAULT 1,
    -- Where it came from: 'builtin', 'user', or the URL of a hub.
    source       text        NOT NULL DEFAULT 'builtin',
    enabled      boolean     NOT NULL DEFAULT true,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT hub_rules_version_positive CHECK (version > 0),
    CONSTRAINT hub_rules_body_is_object CHECK (jsonb_typeof(body) = 'object')
);
CREATE INDEX hub_rules_category_idx ON hub_rules (category, name);
CREATE TRIGGER hub_rules_touch BEFORE UPDATE ON hub_rules
    FOR EACH ROW EXECUTE FUNCTION veil_touch_updated_at();

-- The per-site threat library: detected attacks aggregated by site, attack
-- type and source address.  Upserted by the agent loop on
-- (site_id, attack_type, source_ip).
CREATE TABLE threats (
    id                 uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    site_id            uuid        NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    attack_type        text        NOT NULL,
    source_ip          inet        NOT NULL,
    first_seen         timestamptz NOT NULL DEFAULT now(),
    last_seen          timestamptz NOT NULL DEFAULT now(),
    hit_count          bigint      NOT NULL DEFAULT 1,
    severity           text        NOT NULL DEFAULT 'medium',
    -- A truncated example (method, path, the matched fragment).
    sample             text,
    -- request_log.request_id of that example.
    sample_request_id  text,
    status             text        NOT NULL DEFAULT 'open',
    UNIQUE (site_id, attack_type, source_ip),
    CONSTRAINT threats_hit_count_nonnegative CHECK (hit_count >= 0),
    CONSTRAINT threats_severity_valid CHECK (severity IN ('low', 'medium', 'high', 'critical')),
    CONSTRAINT threats_status_valid CHECK (
        status IN ('open', 'mitigated', 'false_positive', 'ignored'))
);
CREATE INDEX threats_site_last_seen_idx ON threats (site_id, last_seen DESC);
CREATE INDEX threats_source_ip_idx ON threats (source_ip);


-- ===========================================================================
-- Threat intelligence feeds
-- ===========================================================================

CREATE TABLE threat_feeds (
    id               uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    name             text        NOT NULL UNIQUE,
    url              text        NOT NULL,
    -- plain: one address or network per line ('#' comments);
    -- csv / json: see options; spamhaus_drop: "net ; SBLnnn" lines.
    format           text        NOT NULL DEFAULT 'plain',
    -- Format-specific parsing options, e.g. {"column": 0} or {"path": "data[].ip"}.
    options          jsonb       NOT NULL DEFAULT '{}',
    -- The tier given to its entries: block -> 403, scrutinize -> deep
    -- inspection, watch -> logged only.
    tier             text        NOT NULL DEFAULT 'watch',
    -- Category given to its entries unless the feed says otherwise.
    category         text,
    enabled          boolean     NOT NULL DEFAULT true,
    refresh_seconds  integer     NOT NULL DEFAULT 3600,
    -- Conditional GET validators of the last 200 response.
    etag             text,
    last_modified    text,
    last_fetch_at    timestamptz,
    last_success_at  timestamptz,
    -- HTTP status of the last fetch; NULL if none or it failed before a response.
    last_status      smallint,
    last_error       text,
    entry_count      integer     NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT threat_feeds_url_format CHECK (url ~ '^https?://'),
    CONSTRAINT threat_feeds_format_valid CHECK (
        format IN ('plain', 'csv', 'json', 'spamhaus_drop')),
    CONSTRAINT threat_feeds_options_is_object CHECK (jsonb_typeof(options) = 'object'),
    CONSTRAINT threat_feeds_tier_valid CHECK (tier IN ('block', 'scrutinize', 'watch')),
    CONSTRAINT threat_feeds_refresh_range CHECK (refresh_seconds >= 60),
    CONSTRAINT threat_feeds_entry_count_nonnegative CHECK (entry_count >= 0)
);
CREATE TRIGGER threat_feeds_touch BEFORE UPDATE ON threat_feeds
    FOR EACH ROW EXECUTE FUNCTION veil_touch_updated_at();

-- The entries of every feed.  Refreshed in bulk by the feed worker.
CREATE TABLE threat_ips (
    feed_id     uuid        NOT NULL REFERENCES threat_feeds (id) ON DELETE CASCADE,
    -- An address (/32, /128) or a network; host bits zero.
    ip          inet        NOT NULL,
    tier        text        NOT NULL,
    category    text,
    first_seen  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,
    PRIMARY KEY (feed_id, ip),
    CONSTRAINT threat_ips_ip_is_network CHECK (ip = network(ip)),
    CONSTRAINT threat_ips_tier_valid CHECK (tier IN ('block', 'scrutinize', 'watch'))
);
CREATE INDEX threat_ips_ip_gist ON threat_ips USING gist (ip inet_ops);
CREATE INDEX threat_ips_expires_at_idx ON threat_ips (expires_at) WHERE expires_at IS NOT NULL;
-- Bulk refreshes: one notification per statement, with an empty payload;
-- listeners reload the whole set.
CREATE TRIGGER threat_ips_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON threat_ips
    FOR EACH STATEMENT EXECUTE FUNCTION veil_notify_change('veil_threat_ips');


-- ===========================================================================
-- GitHub: tokens, repositories, code findings
-- ===========================================================================

CREATE TABLE github_tokens (
    user_id                  uuid        PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    -- Encrypted by the application before it is stored.
    token_encrypted          bytea       NOT NULL,
    refresh_token_encrypted  bytea,
    expires_at               timestamptz,
    github_login             text        NOT NULL,
    scopes                   text[]      NOT NULL DEFAULT '{}',
    created_at               timestamptz NOT NULL DEFAULT now(),
    updated_at               timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER github_tokens_touch BEFORE UPDATE ON github_tokens
    FOR EACH ROW EXECUTE FUNCTION veil_touch_updated_at();

CREATE TABLE site_repos (
    id                uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    site_id           uuid        NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    -- "owner/name".
    repo              text        NOT NULL,
    default_branch    text,
    status            text        NOT NULL DEFAULT 'pending',
    last_scan_at      timestamptz,
    last_scan_commit  text,
    last_error        text,
    added_by          uuid        REFERENCES users (id) ON DELETE SET NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (site_id, repo),
    CONSTRAINT site_repos_repo_format CHECK (repo ~ '^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$'),
    CONSTRAINT site_repos_status_valid CHECK (
        status IN ('pending', 'scanning', 'ready', 'error', 'disabled'))
);
CREATE TRIGGER site_repos_touch BEFORE UPDATE ON site_repos
    FOR EACH ROW EXECUTE FUNCTION veil_touch_updated_at();

CREATE TABLE code_findings (
    id            uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    site_repo_id  uuid        NOT NULL REFERENCES site_repos (id) ON DELETE CASCADE,
    path          text        NOT NULL,
    line          integer,
    rule          text        NOT NULL,
    severity      text        NOT NULL DEFAULT 'medium',
    message       text        NOT NULL,
    -- Stable across scans (rule + path + normalised snippet), so a finding
    -- seen again updates last_seen instead of duplicating.
    fingerprint   text        NOT NULL,
    status        text        NOT NULL DEFAULT 'open',
    first_seen    timestamptz NOT NULL DEFAULT now(),
    last_seen     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (site_repo_id, fingerprint),
    CONSTRAINT code_findings_line_positive CHECK (line IS NULL OR line > 0),
    CONSTRAINT code_findings_severity_valid CHECK (
        severity IN ('info', 'low', 'medium', 'high', 'critical')),
    CONSTRAINT code_findings_status_valid CHECK (
        status IN ('open', 'fixed', 'ignored', 'false_positive'))
);
CREATE INDEX code_findings_repo_status_idx ON code_findings (site_repo_id, status, severity);


-- ===========================================================================
-- Certificates and ACME
-- ===========================================================================

CREATE TABLE certificates (
    id                  uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    -- The DNS name it is served for, lowercase ('*.' prefix for a wildcard).
    name                text        NOT NULL,
    site_id             uuid        REFERENCES sites (id) ON DELETE SET NULL,
    key_type            text        NOT NULL DEFAULT 'ecdsa-p256',
    -- Leaf first, then intermediates; PEM is ASCII, so the application
    -- decodes the bytes it got from the CA before storing them.
    chain_pem           text        NOT NULL,
    -- Private key, encrypted by the application before it is stored.
    key_encrypted       bytea       NOT NULL,
    not_before          timestamptz NOT NULL,
    not_after           timestamptz NOT NULL,
    issuer              text        NOT NULL,
    -- Hexadecimal.
    serial              text        NOT NULL,
    -- NULL for certificates of the internal CA.
    acme_directory_url  text,
    acme_order_url      text,
    -- From the CA's renewal information (ARI), when it gave any: renew from
    -- then on instead of at two thirds of the lifetime.
    renew_after         timestamptz,
    status              text        NOT NULL DEFAULT 'valid',
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT certificates_name_lowercase CHECK (name = lower(name) AND name <> '' AND name !~ '\s'),
    CONSTRAINT certificates_key_type_valid CHECK (key_type IN ('ecdsa-p256', 'rsa-2048')),
    CONSTRAINT certificates_chain_is_pem CHECK (chain_pem ~ '^\s*-----BEGIN CERTIFICATE-----'),
    CONSTRAINT certificates_validity CHECK (not_after > not_before),
    CONSTRAINT certificates_status_valid CHECK (status IN ('valid', 'superseded', 'revoked'))
);
-- The edge: the newest certificate for a name.
CREATE INDEX certificates_name_not_after_idx ON certificates (name, not_after DESC);
-- The renewal worker: valid certificates by expiry.
CREATE INDEX certificates_renewal_idx ON certificates (not_after) WHERE status = 'valid';
CREATE INDEX certificates_site_id_idx ON certificates (site_id) WHERE site_id IS NOT NULL;
CREATE TRIGGER certificates_touch BEFORE UPDATE ON certificates
    FOR EACH ROW EXECUTE FUNCTION veil_touch_updated_at();
-- Payload: the name (the edge's cache key), not the id.
CREATE TRIGGER certificates_notify AFTER INSERT OR UPDATE OR DELETE ON certificates
    FOR EACH ROW EXECUTE FUNCTION veil_notify_change('veil_certificates', 'name');

-- One ACME account per CA directory.
CREATE TABLE acme_accounts (
    id              uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    directory_url   text        NOT NULL UNIQUE,
    contact_email   text,
    key_type        text        NOT NULL DEFAULT 'ecdsa-p256',
    -- Account key, encrypted by the application before it is stored.
    key_encrypted   bytea       NOT NULL,
    -- The account's URL (the "kid"); NULL until registered.
    account_url     text,
    tos_agreed      boolean     NOT NULL DEFAULT false,
    -- External account binding key id, when the CA requires EAB.
    eab_kid         text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT acme_accounts_key_type_valid CHECK (key_type IN ('ecdsa-p256', 'rsa-2048'))
);
CREATE TRIGGER acme_accounts_touch BEFORE UPDATE ON acme_accounts
    FOR EACH ROW EXECUTE FUNCTION veil_touch_updated_at();

-- Pending challenges, so that whichever node the CA reaches can answer:
-- http-01 by token on :80, tls-alpn-01 by name on the edge.
CREATE TABLE acme_challenges (
    token              text        PRIMARY KEY,
    challenge_type     text        NOT NULL DEFAULT 'http-01',
    key_authorization  text        NOT NULL,
    name               text        NOT NULL,
    expires_at         timestamptz NOT NULL DEFAULT now() + interval '1 hour',
    created_at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT acme_challenges_type_valid CHECK (challenge_type IN ('http-01', 'tls-alpn-01')),
    CONSTRAINT acme_challenges_name_lowercase CHECK (name = lower(name))
);
CREATE INDEX acme_challenges_name_idx ON acme_challenges (name);
CREATE INDEX acme_challenges_expires_at_idx ON acme_challenges (expires_at);

-- Per-name failure back-off for issuance, shared by all nodes.
CREATE TABLE cert_issuance_state (
    name             text        PRIMARY KEY,
    failures         integer     NOT NULL DEFAULT 0,
    last_error       text,
    last_attempt_at  timestamptz,
    last_success_at  timestamptz,
    -- No attempt before this; NULL = any time.
    next_attempt_at  timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT cert_issuance_state_name_lowercase CHECK (name = lower(name)),
    CONSTRAINT cert_issuance_state_failures_nonnegative CHECK (failures >= 0)
);
CREATE TRIGGER cert_issuance_state_touch BEFORE UPDATE ON cert_issuance_state
    FOR EACH ROW EXECUTE FUNCTION veil_touch_updated_at();


-- ===========================================================================
-- Audit log and settings
-- ===========================================================================

-- Who changed what through the dashboard or API.  No personal data beyond
-- the user id: detail must not carry addresses, emails or user agents.
CREATE TABLE audit_log (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ts             timestamptz NOT NULL DEFAULT now(),
    -- NULL: the system, or a user since deleted.
    actor_user_id  uuid        REFERENCES users (id) ON DELETE SET NULL,
    -- e.g. 'site.create', 'decision.delete', 'settings.update'.
    action         text        NOT NULL,
    target_type    text,
    target_id      text,
    detail         jsonb       NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_ts_idx ON audit_log (ts DESC);
CREATE INDEX audit_log_actor_idx ON audit_log (actor_user_id, ts DESC) WHERE actor_user_id IS NOT NULL;
CREATE INDEX audit_log_target_idx ON audit_log (target_type, target_id, ts DESC);

-- Cluster-wide switches, e.g. 'maintenance' = true.  A missing key means
-- the application's default.
CREATE TABLE settings (
    key         text        PRIMARY KEY,
    value       jsonb       NOT NULL,
    updated_by  uuid        REFERENCES users (id) ON DELETE SET NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT settings_key_format CHECK (key ~ '^[a-z0-9][a-z0-9_.:-]{0,199}$')
);
CREATE TRIGGER settings_touch BEFORE UPDATE ON settings
    FOR EACH ROW EXECUTE FUNCTION veil_touch_updated_at();
CREATE TRIGGER settings_notify AFTER INSERT OR UPDATE OR DELETE ON settings
    FOR EACH ROW EXECUTE FUNCTION veil_notify_change('veil_settings', 'key');


-- ===========================================================================
-- This month's and next month's request_log partitions, right away.  The
-- retention is large so that this call never drops anything.
-- ===========================================================================

SELECT action, partition_name FROM veil_request_log_maintain(1200);
