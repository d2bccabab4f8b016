-- Change notifications: every change to a flag row (state, value, kill, archive mark, a sync) or an
-- override row, whoever makes it (the CLI, plain SQL, pbflags v0.6's tools), notifies the channel
-- `feature_flags.changes` with the flag id and, for overrides, the entity id, as JSON. Evaluators
-- LISTEN and drop exactly the cached entries concerned. The triggers only add notifications
-- (delivered at commit, never blocking a write), so a database shared with v0.6 tools works as
-- before.
CREATE OR REPLACE FUNCTION feature_flags.notify_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    changed RECORD;
BEGIN
    IF TG_OP = 'DELETE' THEN
        changed := OLD;
    ELSE
        changed := NEW;
    END IF;
    IF TG_TABLE_NAME = 'flag_overrides' THEN
        PERFORM pg_notify('feature_flags.changes',
            json_build_object('flag_id', changed.flag_id, 'entity_id', changed.entity_id)::text);
    ELSE
        PERFORM pg_notify('feature_flags.changes',
            json_build_object('flag_id', changed.flag_id)::text);
    END IF;
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS notify_flag_change ON feature_flags.flags;
CREATE TRIGGER notify_flag_change
    AFTER INSERT OR UPDATE OR DELETE ON feature_flags.flags
    FOR EACH ROW EXECUTE FUNCTION feature_flags.notify_change();

DROP TRIGGER IF EXISTS notify_override_change ON feature_flags.flag_overrides;
CREATE TRIGGER notify_override_change
    AFTER INSERT OR UPDATE OR DELETE ON feature_flags.flag_overrides
    FOR EACH ROW EXECUTE FUNCTION feature_flags.notify_change();
