-- fastpatch-server schema, version 8: an index of the machines between their grant and
-- their result, by grant time. A grant decision counts them under the group's row lock
-- (`store/grants.rs`), so that count must not grow with the group: before this index
-- it read every machine whose status was one of these, granted or not (events can put a
-- machine there without a grant), 27 ms at 86,000 of them, and the group's grants
-- queued behind it. Now it reads only the grants inside the update timeout.
--
-- The predicate is written exactly as the queries write it (`in_flight!` in grants.rs):
-- SQLite uses a partial index only when the query has the same term.
CREATE INDEX instances_in_flight ON instances (app_id, group_name, granted_at, machine_id)
    WHERE status IN ('granted', 'downloading', 'downloaded', 'installed');
