-- Request-log ids in one block per call.
--
-- veil_request_log_next_ids(n) returns n rows, and the flusher turned each
-- into a Python int while holding the GIL (about a thousand per batch under
-- load).  veil_request_log_reserve_ids(n) reserves n consecutive ids and
-- returns the first: the caller's ids are first .. first + n - 1.
--
-- The reservation takes the same transaction-level advisory lock as the
-- flushers (the key of "request_log.ids", see veil.store.locks.lock_key), so
-- that no other reserver draws from the sequence between its nextval and its
-- setval.  The sequence must only be drawn from through this function (the
-- column default is never used: the flusher always sends the ids).
CREATE FUNCTION veil_request_log_reserve_ids(n integer, lock_key bigint) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    first bigint;
BEGIN
    IF n IS NULL OR n < 1 OR n > 1000000 THEN
        RAISE EXCEPTION 'veil_request_log_reserve_ids: n must be between 1 and 1000000, not %', n
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM pg_advisory_xact_lock(lock_key);
    first := nextval('request_log_id_seq');
    IF n > 1 THEN
        PERFORM setval('request_log_id_seq', first + n - 1);
    END IF;
    RETURN first;
END
$fn$;
