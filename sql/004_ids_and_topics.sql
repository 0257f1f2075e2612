-- Ids are bigints, all of them: 002's hub.to_bigint accepted 18 digits, so a row whose
-- election or committee id was 10^18 or more lost it (NULL) and reached nobody but admins.
-- And a topic has one spelling: ids without leading zeros, within the bigint range.
-- (002 is checksummed and already applied in existing installations: it stays as it was.)

-- A cast that never fails: the whole bigint range, leading zeros allowed (a text column may
-- hold '007'); anything else, including out-of-range digits, is NULL, never an error in the
-- application's write. Pure SQL without an exception block (a subtransaction per row).
CREATE OR REPLACE FUNCTION hub.to_bigint(v text) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE
    WHEN v ~ '^-?[0-9]{1,18}$' THEN v::bigint
    WHEN v ~ '^[0-9]+$' AND (length(ltrim(v, '0')) < 19
        OR (length(ltrim(v, '0')) = 19 AND ltrim(v, '0') COLLATE "C" <= '9223372036854775807')) THEN v::bigint
    WHEN v ~ '^-[0-9]+$' AND (length(ltrim(substr(v, 2), '0')) < 19
        OR (length(ltrim(substr(v, 2), '0')) = 19 AND ltrim(substr(v, 2), '0') COLLATE "C" <= '9223372036854775808')) THEN v::bigint
  END
$$;

/** Sends an application event through the outbox, in the caller's transaction. */
CREATE OR REPLACE FUNCTION hub.publish(topic text, type text, payload jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
  e bigint;
  c bigint;
BEGIN
  -- The hub's own topic grammar: ids without leading zeros ('0' itself is an id), in range.
  IF topic IS NULL OR topic !~ '^(election:(\*|0|[1-9][0-9]{0,18})|committee:(0|[1-9][0-9]{0,18})|user:[^\s]{1,200})$'
     OR (topic ~ '^(election|committee):[0-9]' AND hub.to_bigint(substr(topic, strpos(topic, ':') + 1)) IS NULL) THEN
    RAISE EXCEPTION 'hub.publish: topic must be election:*, election:{id}, committee:{id} or user:{sub} (ids without leading zeros), got %', topic;
  END IF;
  IF type IS NULL OR type !~ '^[a-z][a-z0-9_.-]{0,63}$' OR type IN
     ('ping', 'pong', 'subscribed', 'unsubscribed', 'error', 'resync', 'connection_success',
      'guarantee_update', 'attendance_update', 'voting_update', 'dashboard_update') THEN
    RAISE EXCEPTION 'hub.publish: type must match ^[a-z][a-z0-9_.-]*$ and not be a protocol type, got %', type;
  END IF;
  IF topic LIKE 'election:%' AND topic <> 'election:*' THEN
    e := substr(topic, 10)::bigint;
  ELSIF topic LIKE 'committee:%' THEN
    c := substr(topic, 11)::bigint;
    -- Committee events also reach the committee's election topic (same routing as captured rows).
    IF to_regclass('committees') IS NOT NULL THEN
      EXECUTE 'SELECT election_id FROM committees WHERE id = $1' INTO e USING c;
    END IF;
  END IF;
  INSERT INTO hub.outbox (kind, action, topic, election_id, committee_id, data)
  VALUES ('app', type, topic, e, c, payload);
  PERFORM pg_notify('hub_outbox', '');
END
$$;
