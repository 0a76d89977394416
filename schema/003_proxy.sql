-- What the proxy needs to know per site (issue 10): the largest request body
-- it accepts (413 above it) and whether TRACE is forwarded (405 otherwise).
-- The sites trigger already announces every change on veil_sites.

ALTER TABLE sites
    ADD COLUMN max_body_size bigint NOT NULL DEFAULT 104857600
        CONSTRAINT sites_max_body_size_range
        CHECK (max_body_size BETWEEN 1 AND 1099511627776),
    ADD COLUMN allow_trace boolean NOT NULL DEFAULT false;
