-- Account deletion (FriendService.DeleteUser) runs in steps over several
-- services. Its first step sets deleting_since; from then on every read and
-- change of friend_svc skips the user, as if the row were gone, and its last
-- step deletes the row. A deletion that failed part way is finished by a
-- retry of the call or, failing that, by friend_svc itself.
ALTER TABLE users ADD COLUMN deleting_since timestamptz;

CREATE INDEX users_deleting ON users (deleting_since) WHERE deleting_since IS NOT NULL;
