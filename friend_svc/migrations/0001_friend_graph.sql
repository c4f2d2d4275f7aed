-- Users, pending friend requests and friendships.
--
-- Friendships are stored in BOTH directions (one row per user and friend), so
-- a user's friends are one index scan of the primary key and the table can be
-- distributed by user_id. friendships.friend_id has no foreign key for that
-- reason (a sharded deployment cannot check a key held by another shard); the
-- service locks both users' rows in the transaction that adds a friendship,
-- so the friend always exists.

CREATE TABLE users (
    user_id      text        PRIMARY KEY,
    display_name text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT users_user_id_format CHECK (user_id ~ '^[A-Za-z0-9._-]{1,64}$'),
    CONSTRAINT users_display_name_length CHECK (char_length(display_name) BETWEEN 1 AND 100)
);

CREATE TABLE friend_requests (
    from_id    text        NOT NULL REFERENCES users (user_id),
    to_id      text        NOT NULL REFERENCES users (user_id),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (from_id, to_id),
    CONSTRAINT friend_requests_not_self CHECK (from_id <> to_id)
);

-- Incoming and outgoing lists, newest first (keyset on created_at, other id).
CREATE INDEX friend_requests_incoming ON friend_requests (to_id, created_at, from_id);
CREATE INDEX friend_requests_outgoing ON friend_requests (from_id, created_at, to_id);

CREATE TABLE friendships (
    user_id    text        NOT NULL REFERENCES users (user_id),
    friend_id  text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, friend_id),
    CONSTRAINT friendships_not_self CHECK (user_id <> friend_id)
);
