-- When each run ended, on the coordinator's clock: the agent's own times corrected by how
-- far its clock is off (measured on each delivery), so runs queued while the coordinator
-- was away keep their times, and an agent whose clock is wrong misplaces none.
-- (Reports stored before it have none: their arrival stands for it.)
ALTER TABLE reports ADD COLUMN ran INTEGER;
-- How far each site's clock is off (its clock minus the coordinator's, in seconds), as
-- measured on its last delivery of reports.
ALTER TABLE enrolment ADD COLUMN clock_offset INTEGER;
