"""`python -m friend_svc`: users, friend requests and friendships on Postgres."""

from mesh.server import main

from .app import FriendApp

if __name__ == "__main__":
    main(FriendApp, lambda s: s.friend_port)
