-- Privacy controls: who sees a user, how precisely, and for how long.
-- The source of truth; mirrored into Redis as `sharing:{uid}` (a versioned
-- SharingPolicy) and `hidden:{uid}`. No row = the default (all friends,
-- precise, visible). Every row names its user(s) with ON DELETE CASCADE, so
-- deleting a user from `users` removes their settings and their places in
-- other users' lists.

-- Ghost mode with a timer: hidden until this time (NULL: until turned off).
ALTER TABLE user_visibility ADD COLUMN hidden_until timestamptz;
CREATE INDEX user_visibility_hidden_until ON user_visibility (hidden_until)
    WHERE hidden_until IS NOT NULL;

-- One version sequence for every policy: a newer policy always has a larger
-- version, even after a user is deleted and the id is taken again.
CREATE SEQUENCE sharing_version;

CREATE TABLE sharing_settings (
    user_id           text        PRIMARY KEY REFERENCES users (user_id) ON DELETE CASCADE,
    audience          smallint    NOT NULL DEFAULT 1,  -- nearby.v1.Audience
    default_precision smallint    NOT NULL DEFAULT 1,  -- nearby.v1.Precision
    version           bigint      NOT NULL,
    updated_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT sharing_settings_audience CHECK (audience BETWEEN 1 AND 3),
    CONSTRAINT sharing_settings_precision CHECK (default_precision BETWEEN 1 AND 2)
);

-- The list of AUDIENCE_ONLY / AUDIENCE_ALL_EXCEPT.
CREATE TABLE sharing_audience (
    user_id   text NOT NULL REFERENCES sharing_settings (user_id) ON DELETE CASCADE,
    member_id text NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    PRIMARY KEY (user_id, member_id)
);
CREATE INDEX sharing_audience_member ON sharing_audience (member_id);

-- Per-friend precision, possibly time-limited.
CREATE TABLE sharing_rules (
    user_id    text        NOT NULL REFERENCES sharing_settings (user_id) ON DELETE CASCADE,
    friend_id  text        NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    precision  smallint    NOT NULL,
    expires_at timestamptz,
    PRIMARY KEY (user_id, friend_id),
    CONSTRAINT sharing_rules_precision CHECK (precision BETWEEN 1 AND 2)
);
CREATE INDEX sharing_rules_friend ON sharing_rules (friend_id);
CREATE INDEX sharing_rules_expires_at ON sharing_rules (expires_at) WHERE expires_at IS NOT NULL;
