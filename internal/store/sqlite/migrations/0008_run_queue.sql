-- 0008: indexes for a scheduler pass that does not read the whole queue.
--
-- runs_queue answers CountQueuedRuns from the index alone (queued runs per
-- connection and placement reason) and lets SetPlacementReason skip the
-- runs that already have the reason without reading their rows.
-- runs_state_deadline finds the queued runs whose queue deadline has
-- passed, and the next deadline, without a scan.
CREATE INDEX runs_queue ON runs (state, connection_id, placement_reason);
CREATE INDEX runs_state_deadline ON runs (state, queue_deadline);
