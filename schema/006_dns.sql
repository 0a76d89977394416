-- DNS verification of pending sites (the DNS worker and "Check now").
--
-- One row per site that has been checked, created by the first check.  A
-- pending site without a row is due FIRST_CHECK seconds after its
-- created_at (veil.store.dns).  The status change a check causes is made
-- on sites (pending -> active with dns_verified_at, or pending -> error when
-- verification gives up), whose trigger announces it on veil_sites; this
-- table has no cache behind it and notifies nothing.
CREATE TABLE site_dns_checks (
    site_id          uuid        PRIMARY KEY REFERENCES sites (id) ON DELETE CASCADE,
    -- When this round of verification began (the site's creation, or the
    -- "Check now" that revived a site verification had given up on): the
    -- worker gives up a week after it.
    started_at       timestamptz NOT NULL,
    -- Checks run in this round; the worker's back-off grows with them.
    attempts         integer     NOT NULL DEFAULT 0,
    last_checked_at  timestamptz,
    -- When the worker checks next; NULL when it will not (the site is
    -- verified, given up on, or not pending).
    next_check_at    timestamptz,
    -- The last check's outcome and report (veil.dns.check.Report.to_json).
    last_ok          boolean,
    last_report      jsonb,
    -- The last "Check now", for its per-site rate limit.
    last_manual_at   timestamptz,
    -- Set when the worker gave up (the site went to 'error').
    gave_up_at       timestamptz,
    CONSTRAINT site_dns_checks_attempts_range CHECK (attempts >= 0),
    CONSTRAINT site_dns_checks_report_object CHECK (
        last_report IS NULL OR jsonb_typeof(last_report) = 'object')
);
CREATE INDEX site_dns_checks_next_idx ON site_dns_checks (next_check_at)
    WHERE next_check_at IS NOT NULL;
