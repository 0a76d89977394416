-- The dashboard's reads of the request log (veil/store/logquery.py).
--
-- What the proxy pays for them: every index on request_log is one more
-- btree insert per row in each COPY batch, and the rollup trigger below one
-- more pass over each batch (docs/performance.md has the figures, measured
-- with bench/dashboard/copyrate.py).  So this migration adds no index: it
-- drops one, widens one, and adds one trigger.
--
--   * request_log_site_id_idx (site_id, id) goes: it was meant for resuming
--     the live stream by id, but the stream resumes from the hub's ring or
--     re-hydrates by (site_id, ts) (veil/live/sse.py), and other processes'
--     rows are fetched by id ranges through the primary key.  It cost about
--     a sixth of each batch's time.
--   * request_log_client_ip_idx (client_ip, ts) becomes (client_ip, site_id,
--     ts): "this address on this site, newest first" (a click on an address
--     in the dashboard) is one index range; it was a walk over the address's
--     rows on every site, which for a busy address on a small site read
--     thousands of rows per page.  "This address anywhere" and networks
--     (client_ip << net) still start from the address.  The wider entries
--     cost a few percent of each batch's time.
--   * The dashboard's lists read (site_id, ts DESC) newest first, in time
--     slices sized by the rollups below, so that a filter no index serves
--     (a path prefix, a method, a status) reads a bounded number of rows per
--     call instead of a month of them.
--
-- Rollups.  Stats over days (requests, blocked, errors, latency percentiles,
-- attack types per time bucket) would read every row of the range: seconds
-- for a busy site's month.  A statement-level trigger adds each COPY batch's
-- rows, per site, to per-5-minute and per-hour counters in the same
-- transaction, so they are exact and never lag.  Latency is kept as a
-- histogram over fixed bounds (veil_request_log_latency_bounds), from which
-- percentiles are estimated; the exact ones come from the rows themselves
-- for short ranges.  Rows without a site (unknown hosts) are not rolled up.
-- The upserts go in (site, bucket) order, so that two processes' flushes
-- touching the same sites take the row locks in the same order (no
-- deadlocks).  Existing rows are rolled up below, once; the trigger's lock
-- holds the flushers' COPY until this migration commits.


-- The latency histogram's bucket bounds in milliseconds: bucket 0 is below
-- the first bound, bucket k is [bound k, bound k+1), the last is 60 s and
-- more (width_bucket's numbering).  Changing them invalidates the rollups.
CREATE FUNCTION veil_request_log_latency_bounds() RETURNS float8[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
    SELECT ARRAY[0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 150, 200,
                 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 7500, 10000, 15000, 30000,
                 60000]::float8[]
$fn$;

-- A histogram (counts of buckets 0 .. 30) from bucket numbers and their
-- counts, as two parallel arrays (NULL buckets, rows without a duration,
-- are left out).
CREATE FUNCTION veil_histogram(buckets integer[], counts bigint[]) RETURNS integer[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $fn$
DECLARE
    histogram integer[] := array_fill(0, ARRAY[31]);
BEGIN
    FOR i IN 1 .. coalesce(array_length(buckets, 1), 0) LOOP
        IF buckets[i] IS NOT NULL THEN
            histogram[buckets[i] + 1] := histogram[buckets[i] + 1] + counts[i];
        END IF;
    END LOOP;
    RETURN histogram;
END
$fn$;

-- Element-wise sum of two histograms.
CREATE FUNCTION veil_histogram_add(a integer[], b integer[]) RETURNS integer[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
    SELECT array_agg(coalesce(x, 0) + coalesce(y, 0) ORDER BY i)
    FROM unnest(a, b) WITH ORDINALITY AS t(x, y, i)
$fn$;

-- Per site and 5 minutes (bucket = the start, UTC), and per site and hour.
-- Updated in place by every batch: fillfactor leaves room for HOT updates.
CREATE TABLE request_log_5min (
    site_id        uuid        NOT NULL,
    bucket         timestamptz NOT NULL,
    requests       integer     NOT NULL,
    blocked        integer     NOT NULL,
    -- status 400-499 and 500 and above.
    client_errors  integer     NOT NULL,
    server_errors  integer     NOT NULL,
    -- rows with an attack type.
    attacks        integer     NOT NULL,
    bytes_out      bigint      NOT NULL,
    -- veil_histogram of width_bucket(duration_ms, veil_request_log_latency_bounds()).
    latency        integer[]   NOT NULL,
    PRIMARY KEY (site_id, bucket)
) WITH (fillfactor = 50);

CREATE TABLE request_log_hourly (LIKE request_log_5min INCLUDING ALL) WITH (fillfactor = 50);

-- Attack types per site and hour (the rows of request_log_hourly.attacks).
CREATE TABLE request_log_attacks_hourly (
    site_id      uuid        NOT NULL,
    bucket       timestamptz NOT NULL,
    attack_type  text        NOT NULL,
    requests     integer     NOT NULL,
    blocked      integer     NOT NULL,
    PRIMARY KEY (site_id, bucket, attack_type)
) WITH (fillfactor = 50);

-- Pruning (veil_request_log_maintain below) deletes by bucket: a BRIN index
-- costs next to nothing to keep, and rows arrive roughly in bucket order.
CREATE INDEX request_log_5min_bucket_idx ON request_log_5min USING brin (bucket);
CREATE INDEX request_log_hourly_bucket_idx ON request_log_hourly USING brin (bucket);
CREATE INDEX request_log_attacks_hourly_bucket_idx ON request_log_attacks_hourly
    USING brin (bucket);

CREATE FUNCTION veil_request_log_rollup() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    -- The batch per site, 5 minutes and latency bucket (a few hundred
    -- groups), summed into both levels.
    WITH g AS MATERIALIZED (
        SELECT site_id, date_bin('5 minutes', ts, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS b,
               width_bucket(duration_ms::float8, veil_request_log_latency_bounds()) AS h,
               count(*) AS n, count(*) FILTER (WHERE blocked) AS blocked,
               count(*) FILTER (WHERE status >= 400 AND status < 500) AS client_errors,
               count(*) FILTER (WHERE status >= 500) AS server_errors,
               count(attack_type) AS attacks, coalesce(sum(bytes_out), 0) AS bytes_out
        FROM new_rows WHERE site_id IS NOT NULL
        GROUP BY 1, 2, 3),
    five AS (
        INSERT INTO request_log_5min AS r
        SELECT site_id, b, sum(n), sum(blocked), sum(client_errors), sum(server_errors),
               sum(attacks), sum(bytes_out), veil_histogram(array_agg(h), array_agg(n))
        FROM g GROUP BY 1, 2 ORDER BY 1, 2
        ON CONFLICT (site_id, bucket) DO UPDATE SET
            requests = r.requests + excluded.requests, blocked = r.blocked + excluded.blocked,
            client_errors = r.client_errors + excluded.client_errors,
            server_errors = r.server_errors + excluded.server_errors,
            attacks = r.attacks + excluded.attacks, bytes_out = r.bytes_out + excluded.bytes_out,
            latency = veil_histogram_add(r.latency, excluded.latency))
    INSERT INTO request_log_hourly AS r
    SELECT site_id, date_trunc('hour', b, 'UTC'), sum(n), sum(blocked), sum(client_errors),
           sum(server_errors), sum(attacks), sum(bytes_out),
           veil_histogram(array_agg(h), array_agg(n))
    FROM g GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (site_id, bucket) DO UPDATE SET
        requests = r.requests + excluded.requests, blocked = r.blocked + excluded.blocked,
        client_errors = r.client_errors + excluded.client_errors,
        server_errors = r.server_errors + excluded.server_errors,
        attacks = r.attacks + excluded.attacks, bytes_out = r.bytes_out + excluded.bytes_out,
        latency = veil_histogram_add(r.latency, excluded.latency);

    INSERT INTO request_log_attacks_hourly AS r
    SELECT site_id, date_trunc('hour', ts, 'UTC'), attack_type, count(*),
           count(*) FILTER (WHERE blocked)
    FROM new_rows WHERE site_id IS NOT NULL AND attack_type IS NOT NULL
    GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (site_id, bucket, attack_type) DO UPDATE SET
        requests = r.requests + excluded.requests, blocked = r.blocked + excluded.blocked;
    RETURN NULL;
END
$fn$;

CREATE TRIGGER request_log_rollup AFTER INSERT ON request_log
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION veil_request_log_rollup();

-- The rows already logged, once: the trigger's statements over request_log
-- (tests/integration/test_logquery.py checks that both give the same rollups).
WITH g AS MATERIALIZED (
    SELECT site_id, date_bin('5 minutes', ts, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS b,
           width_bucket(duration_ms::float8, veil_request_log_latency_bounds()) AS h,
           count(*) AS n, count(*) FILTER (WHERE blocked) AS blocked,
           count(*) FILTER (WHERE status >= 400 AND status < 500) AS client_errors,
           count(*) FILTER (WHERE status >= 500) AS server_errors,
           count(attack_type) AS attacks, coalesce(sum(bytes_out), 0) AS bytes_out
    FROM request_log WHERE site_id IS NOT NULL
    GROUP BY 1, 2, 3),
five AS (
    INSERT INTO request_log_5min
    SELECT site_id, b, sum(n), sum(blocked), sum(client_errors), sum(server_errors),
           sum(attacks), sum(bytes_out), veil_histogram(array_agg(h), array_agg(n))
    FROM g GROUP BY 1, 2)
INSERT INTO request_log_hourly
SELECT site_id, date_trunc('hour', b, 'UTC'), sum(n), sum(blocked), sum(client_errors),
       sum(server_errors), sum(attacks), sum(bytes_out),
       veil_histogram(array_agg(h), array_agg(n))
FROM g GROUP BY 1, 2;

INSERT INTO request_log_attacks_hourly
SELECT site_id, date_trunc('hour', ts, 'UTC'), attack_type, count(*),
       count(*) FILTER (WHERE blocked)
FROM request_log WHERE site_id IS NOT NULL AND attack_type IS NOT NULL
GROUP BY 1, 2, 3;

-- See the top of this file.
DROP INDEX request_log_site_id_idx;
DROP INDEX request_log_client_ip_idx;
CREATE INDEX request_log_client_ip_idx ON request_log (client_ip, site_id, ts);

-- Partition maintenance also prunes the rollups: what is older than the
-- oldest request_log partition goes (the same retention).  The function of
-- schema 001 keeps its body under a new name; the daily worker keeps
-- calling veil_request_log_maintain.
ALTER FUNCTION veil_request_log_maintain(integer, timestamptz)
    RENAME TO veil_request_log_maintain_partitions;

CREATE FUNCTION veil_request_log_maintain(retention_months integer,
                                          at timestamptz DEFAULT now())
RETURNS TABLE (action text, partition_name text)
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    oldest timestamptz;
BEGIN
    RETURN QUERY SELECT * FROM veil_request_log_maintain_partitions(retention_months, at);
    SELECT min(range_start) INTO oldest FROM veil_request_log_partitions();
    IF oldest IS NOT NULL THEN
        DELETE FROM request_log_5min WHERE bucket < oldest;
        DELETE FROM request_log_hourly WHERE bucket < oldest;
        DELETE FROM request_log_attacks_hourly WHERE bucket < oldest;
    END IF;
END
$fn$;
