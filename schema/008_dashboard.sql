-- The dashboard's site pages (issue 12 items 3, 4 and 6): what the earlier
-- schemas lack for them.
--
--   * site_status_changes: every status a site has been in, and when, for
--     the site page's status machine (pending -> active -> ssl_provisioning
--     -> live, or error).  Kept by a trigger on sites, so the DNS worker,
--     the edge and the command line record their changes without knowing.
--   * site_invitations: owners invite people to a site by e-mail; the link
--     in the mail carries a token stored here only as its SHA-256.
--   * audit_log.site_id: the site an audit row is about, set by a trigger
--     from what the writers already record (a 'site' target, or a site_id
--     in the detail), so that a site's own history is one index range.


-- ===========================================================================
-- Site status history
-- ===========================================================================

CREATE TABLE site_status_changes (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    site_id    uuid        NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    status     text        NOT NULL,
    detail     text,
    at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX site_status_changes_site_idx ON site_status_changes (site_id, id);

CREATE FUNCTION veil_site_status_change() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.status = OLD.status THEN
        RETURN NULL;
    END IF;
    INSERT INTO site_status_changes (site_id, status, detail)
    VALUES (NEW.id, NEW.status, NEW.status_detail);
    RETURN NULL;
END
$fn$;

CREATE TRIGGER sites_status_history AFTER INSERT OR UPDATE OF status ON sites
    FOR EACH ROW EXECUTE FUNCTION veil_site_status_change();

-- The sites that exist already start their history where they are.
INSERT INTO site_status_changes (site_id, status, detail, at)
SELECT id, 'pending', NULL, created_at FROM sites;
INSERT INTO site_status_changes (site_id, status, detail, at)
SELECT id, 'active', NULL, dns_verified_at FROM sites WHERE dns_verified_at IS NOT NULL;
INSERT INTO site_status_changes (site_id, status, detail, at)
SELECT id, status, status_detail, updated_at FROM sites WHERE status NOT IN ('pending', 'active');


-- ===========================================================================
-- Invitations
-- ===========================================================================

-- An owner invites an address to a site with a role.  The invitee opens the
-- link from the mail and accepts it signed in with that address (or creates
-- an account for it there: the link proves the mailbox).  Single use:
-- consumed by UPDATE ... SET accepted_at ... WHERE accepted_at IS NULL.
CREATE TABLE site_invitations (
    id           uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    site_id      uuid        NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    email        text        NOT NULL,
    role         text        NOT NULL,
    token_hash   bytea       NOT NULL UNIQUE,
    invited_by   uuid        REFERENCES users (id) ON DELETE SET NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    accepted_at  timestamptz,
    accepted_by  uuid        REFERENCES users (id) ON DELETE SET NULL,
    revoked_at   timestamptz,
    CONSTRAINT site_invitations_role_valid CHECK (role IN ('admin', 'viewer')),
    CONSTRAINT site_invitations_hash_is_sha256 CHECK (length(token_hash) = 32),
    CONSTRAINT site_invitations_expiry_after_creation CHECK (expires_at > created_at)
);
CREATE INDEX site_invitations_site_idx ON site_invitations (site_id, created_at DESC, id DESC);
-- One open invitation per site and address.
CREATE UNIQUE INDEX site_invitations_open_idx ON site_invitations (site_id, lower(email))
    WHERE accepted_at IS NULL AND revoked_at IS NULL;


-- ===========================================================================
-- A site's audit rows
-- ===========================================================================

ALTER TABLE audit_log ADD COLUMN site_id uuid;

CREATE FUNCTION veil_audit_site() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    IF NEW.site_id IS NULL THEN
        IF NEW.target_type = 'site' AND NEW.target_id ~ '^[0-9a-f-]{36}$' THEN
            NEW.site_id := NEW.target_id::uuid;
        ELSIF NEW.detail ->> 'site_id' ~ '^[0-9a-f-]{36}$' THEN
            NEW.site_id := (NEW.detail ->> 'site_id')::uuid;
        END IF;
    END IF;
    RETURN NEW;
END
$fn$;

CREATE TRIGGER audit_log_site BEFORE INSERT ON audit_log
    FOR EACH ROW EXECUTE FUNCTION veil_audit_site();

UPDATE audit_log SET site_id = target_id::uuid
WHERE target_type = 'site' AND target_id ~ '^[0-9a-f-]{36}$';
UPDATE audit_log SET site_id = (detail ->> 'site_id')::uuid
WHERE site_id IS NULL AND detail ->> 'site_id' ~ '^[0-9a-f-]{36}$';

CREATE INDEX audit_log_site_idx ON audit_log (site_id, id DESC) WHERE site_id IS NOT NULL;
