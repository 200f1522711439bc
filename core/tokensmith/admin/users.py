"""Users: the resource owners of the password grant, and the administrators of the admin
API by their role (``admin``: everything; ``reader``: read only)."""

from __future__ import annotations

import time

from tokensmith.admin.audit import Actor, OperationError, not_found, record
from tokensmith.models import Storage, User
from tokensmith.oauth.clientauth import storable_id
from tokensmith.security import hashing as kdf

__all__ = [
    "ROLES",
    "add_user",
    "remove_user",
    "set_role",
    "revoke_user_tokens",
    "unlock_user",
    "check_username",
]

#: ``admin`` may do everything the admin API offers; ``reader`` may read (GET) only.
ROLES = ("admin", "reader")


def check_username(username: str) -> str:
    if not username or not username.isprintable() or len(username) > 256 or username != username.strip():
        raise OperationError(
            "the username must be printable, at most 256 characters, without leading or trailing spaces"
        )
    return username


def check_role(role: str | None) -> str | None:
    if role is not None and role not in ROLES:
        raise OperationError(f"unknown role {role!r}; use {' or '.join(ROLES)}")
    return role


def add_user(store: Storage, username: str, password: str, role: str | None, actor: Actor) -> User:
    check_username(username)
    check_role(role)
    if not password:
        raise OperationError("the password is empty")
    if store.get_user(username) is not None:
        raise OperationError(f"user {username!r} exists already", 409, "conflict")
    user = User(username, kdf.hash_secret(password), int(time.time()), role=role)
    store.add_user(user)
    record(store, actor, "user.create", username, role=role)
    return user


def get_user(store: Storage, username: str) -> User:
    user = store.get_user(username) if storable_id(username) else None
    if user is None:
        raise not_found(f"no user {username!r}")
    return user


def set_role(store: Storage, username: str, role: str | None, actor: Actor) -> User:
    check_role(role)
    if not storable_id(username) or not store.set_user_role(username, role):
        raise not_found(f"no user {username!r}")
    record(store, actor, "user.role", username, role=role)
    return get_user(store, username)


def remove_user(store: Storage, username: str, actor: Actor) -> None:
    """Remove the user and revoke every token and grant issued for them."""
    if not storable_id(username) or not store.remove_user(username):
        raise not_found(f"no user {username!r}")
    record(store, actor, "user.delete", username)


def revoke_user_tokens(store: Storage, username: str, actor: Actor) -> int:
    user = get_user(store, username)
    count = store.revoke_user_tokens(user.user_id)
    record(store, actor, "user.revoke_tokens", username, count=count)
    return count


def unlock_user(store: Storage, username: str, actor: Actor) -> None:
    if not storable_id(username) or not store.unlock_user(username):
        raise not_found(f"no user {username!r}")
    record(store, actor, "user.unlock", username)
