-- Ghost mode: the source of truth for whether a user's location is shared.
-- No row = visible (the default). Mirrored into Redis as `hidden:{uid}`.
CREATE TABLE user_visibility (
    user_id    text        PRIMARY KEY,
    hidden     boolean     NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX user_visibility_hidden ON user_visibility (user_id) WHERE hidden;
CREATE INDEX user_visibility_updated_at ON user_visibility (updated_at);
