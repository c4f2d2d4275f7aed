-- Every shared (or out-of-order) location report, kept for the retention period.
-- Daily range partitions are created ahead by location_svc and dropped after
-- the retention; the DEFAULT partition catches rows outside them (late reports
-- older than the partitions created, or rows written before they exist).
CREATE TABLE location_history (
    user_id     text             NOT NULL,
    recorded_at timestamptz      NOT NULL,
    latitude    double precision NOT NULL,
    longitude   double precision NOT NULL,
    PRIMARY KEY (user_id, recorded_at)
) PARTITION BY RANGE (recorded_at);

CREATE TABLE location_history_default PARTITION OF location_history DEFAULT;
