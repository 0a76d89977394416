-- The WAF's configuration plane (issue 11, DESIGN §6): per-site tuning,
-- exclusions and endpoint profiles as the policy table reads them, and the
-- request-log columns of a signature verdict.
--
-- Every change here is a catalog change: new columns are nullable or have a
-- constant default, so no table is rewritten (the request log included).


-- ===========================================================================
-- Per-site tuning (mode and paranoia_level are in 001)
-- ===========================================================================

-- anomaly_threshold: a request whose anomaly score reaches it is malicious.
-- inspect_body_limit: bytes of an inspectable body held and inspected; NULL
--   means Veil's configured default (64 KiB unless configured otherwise).
-- body_overflow: what a body longer than the limit gets: 'inspect-prefix'
--   (inspect what was held, stream the rest) or 'block' (413).
-- Changes notify veil_sites through the existing sites_notify trigger.
ALTER TABLE sites
    ADD COLUMN anomaly_threshold   integer NOT NULL DEFAULT 5,
    ADD COLUMN inspect_body_limit  integer,
    ADD COLUMN body_overflow       text    NOT NULL DEFAULT 'inspect-prefix',
    ADD CONSTRAINT sites_anomaly_threshold_range CHECK (anomaly_threshold BETWEEN 1 AND 1000),
    ADD CONSTRAINT sites_inspect_body_limit_range CHECK (
        inspect_body_limit IS NULL OR inspect_body_limit BETWEEN 0 AND 1048576),
    ADD CONSTRAINT sites_body_overflow_valid CHECK (body_overflow IN ('inspect-prefix', 'block'));


-- ===========================================================================
-- Exclusions: in the site's active rules document
-- ===========================================================================

-- A site's rules document (rules.body, versioned per site, one version
-- active) holds its exclusions as an array of objects:
--
--   {"exclusions": [{"id": "k3f9q2ma", "rule": 942100, "path": "/search",
--                    "target": "args:q", "comment": "...",
--                    "created_at": "...", "created_by": "<user id>"},
--                   {"id": "...", "class": "sqli"}]}
--
-- Each change writes a new version (its created_by and comment say who and
-- why) and makes it the active one; an exclusion keeps its id from version
-- to version, and ids are never reused.  Other keys of the document are
-- carried over unchanged.
ALTER TABLE rules
    ADD CONSTRAINT rules_exclusions_is_array CHECK (
        NOT body ? 'exclusions' OR jsonb_typeof(body -> 'exclusions') = 'array');
-- `veil waf unexclude ID` and the check that a new id is unused:
-- body -> 'exclusions' @> '[{"id": "..."}]'.
CREATE INDEX rules_exclusions_idx ON rules USING gin ((body -> 'exclusions') jsonb_path_ops);


-- ===========================================================================
-- Endpoint profiles: notify when what the hot path reads changes
-- ===========================================================================

-- 001 notifies on a mode change or a move to another site; a skip or deep
-- profile whose method or pattern is changed in place must be heard too.
DROP TRIGGER endpoint_profiles_notify_update ON endpoint_profiles;
CREATE TRIGGER endpoint_profiles_notify_update AFTER UPDATE ON endpoint_profiles
    FOR EACH ROW WHEN (
        OLD.mode IS DISTINCT FROM NEW.mode
        OR OLD.site_id IS DISTINCT FROM NEW.site_id
        OR (NEW.mode <> 'normal'
            AND (OLD.method, OLD.path_pattern) IS DISTINCT FROM (NEW.method, NEW.path_pattern)))
    EXECUTE FUNCTION veil_notify_change('veil_endpoint_profiles', 'site_id');


-- ===========================================================================
-- Request log: the signature stage's verdict
-- ===========================================================================

-- Added to the partitioned parent, so every partition, present and future,
-- has them.  All nullable: rows the WAF did not inspect, and every row
-- written before this migration, have NULL.
--
-- rule_ids: the ids of the rules that matched (after exclusions), in order.
-- anomaly_score: their summed severities.
-- excerpt: for non-benign rows, a redacted excerpt of the request (which
--   targets matched; cookies, Authorization and password- or token-like
--   parameters masked), written by the proxy, bounded by the writer.
ALTER TABLE request_log
    ADD COLUMN rule_ids       integer[],
    ADD COLUMN anomaly_score  integer,
    ADD COLUMN excerpt        text;
