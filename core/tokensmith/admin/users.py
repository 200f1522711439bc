"""Users: the resource owners of the password grant, and the administrators of the admin
API by their role (``admin``: everything; ``reader``: read only)."""

from __future__ import annotations

import hashlib
import secrets
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
    "set_password",
    "check_password_policy",
    "session_stamp",
    "MIN_PASSWORD_LENGTH",
    "revoke_user_tokens",
    "unlock_user",
    "check_username",
]

#: ``admin`` may do everything the admin API offers; ``reader`` may read (GET) only.
ROLES = ("admin", "reader")
#: The shortest password a user may be given (by the CLI, the admin API and the console).
MIN_PASSWORD_LENGTH = 8
#: Plugin-state namespace of each user's session generation (by user_id): a new random value
#: whenever their role or password changes, so that sessions made before it end.
_GENERATIONS = "tokensmith.user-generation"


def check_password_policy(password: str) -> str:
    if not password:
        raise OperationError("the password is empty")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise OperationError(f"the password must be at least {MIN_PASSWORD_LENGTH} characters long")
    return password


def check_username(username: str) -> str:
    if not username or not username.isprintable() or len(username) > 256 or username != username.strip():
        raise OperationError(
            "the username must be printable, at most 256 characters, without leading or trailing spaces"
        )
    if "/" in username:
        # The admin API and the console name a user in a URL path (/api/users/NAME), where a
        # slash would split the name.
        raise OperationError("the username must not contain '/'")
    return username


def check_role(role: str | None) -> str | None:
    if role is not None and role not in ROLES:
        raise OperationError(f"unknown role {role!r}; use {' or '.join(ROLES)}")
    return role


def add_user(store: Storage, username: str, password: str, role: str | None, actor: Actor) -> User:
    check_username(username)
    check_role(role)
    check_password_policy(password)
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


def session_stamp(store: Storage, user: User) -> str:
    """What a sign-in session keeps of its user, to end when it changes: the user's id (a user
    removed and another added under the same name differ), their password hash and their
    generation (new with every role or password change)."""
    generation = store.get_state(_GENERATIONS, user.user_id) or ""
    return hashlib.sha256(f"{user.user_id}\0{user.password_hash}\0{generation}".encode()).hexdigest()


def _new_generation(store: Storage, user: User) -> None:
    store.set_state(_GENERATIONS, user.user_id, secrets.token_hex(16))


def set_role(store: Storage, username: str, role: str | None, actor: Actor) -> User:
    """Set the user's role; a change ends their sign-in sessions (a demoted and re-promoted
    administrator signs in again)."""
    check_role(role)
    before = get_user(store, username)
    if not store.set_user_role(username, role):
        raise not_found(f"no user {username!r}")
    user = get_user(store, username)
    if before.role != role:
        _new_generation(store, user)
    record(store, actor, "user.role", username, role=role)
    return user


def set_password(store: Storage, username: str, password: str, actor: Actor) -> User:
    """Give the user a new password; their sign-in sessions end. The audit entry names the
    user, never the password."""
    check_password_policy(password)
    user = get_user(store, username)
    if not store.set_user_password(username, kdf.hash_secret(password)):
        raise not_found(f"no user {username!r}")
    _new_generation(store, user)
    record(store, actor, "user.password", username)
    return get_user(store, username)


def remove_user(store: Storage, username: str, actor: Actor) -> None:
    """Remove the user and revoke every token and grant issued for them."""
    user = store.get_user(username) if storable_id(username) else None
    if user is None or not store.remove_user(username):
        raise not_found(f"no user {username!r}")
    store.delete_state(_GENERATIONS, user.user_id)
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
