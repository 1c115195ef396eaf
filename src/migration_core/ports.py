"""The ports: what the core needs from the world, as Protocols. Adapters satisfy
them structurally, without inheriting."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import Executor
from datetime import datetime
from types import TracebackType
from typing import Generic, Protocol, TypeVar

import attrs

from .copy_jobs import CopyJob
from .entities import (
    Credentials,
    CredentialsSummary,
    Event,
    Migration,
    MigrationState,
    MigrationTarget,
    MountPoint,
    User,
    Wave,
    Workload,
)

E = TypeVar("E")
E_co = TypeVar("E_co", covariant=True)

FilterValue = str | int


@attrs.frozen
class ListQuery:
    """Exact-value filters (entity field names), order by id, and a page."""

    filters: Mapping[str, FilterValue] = attrs.field(factory=dict)
    descending: bool = False
    limit: int = 100
    offset: int = 0


@attrs.frozen
class Page(Generic[E_co]):
    """The number of entities matching a query, and one page of them."""

    count: int
    items: Sequence[E_co]


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware, in UTC."""
        ...


class PasswordHasher(Protocol):
    def hash(self, password: str) -> str: ...

    def verify(self, password_hash: str, password: str) -> bool: ...


class Repository(Protocol[E]):
    """One kind of owned entity. `get`, `update` and `delete` raise NotFound for
    a missing id or another owner's; `add` and `update` raise Conflict where a
    uniqueness constraint is broken, and return the entity as stored."""

    def add(self, entity: E) -> E: ...

    def get(self, owner_id: int, entity_id: int) -> E:
        """The entity, to write back: in a writing unit, storage may hold its
        row until the commit, so that no other unit's change is undone."""
        ...

    def peek(self, owner_id: int, entity_id: int) -> E:
        """The entity, only to look at (a check, a copy): nothing written back
        to it, so storage need not hold its row, and a unit that reads many
        rows it shares with others does not make them wait or deadlock."""
        ...

    def update(self, entity: E) -> E: ...

    def delete(self, owner_id: int, entity_id: int) -> None: ...

    def find(self, owner_id: int, query: ListQuery) -> tuple[int, list[E]]:
        """The number of matching entities, and the requested page of them."""
        ...

    def referrers(self, field: str, entity_id: int) -> list[int]:
        """Ids of entities whose `field` is, or (for a list field) holds, `entity_id`."""
        ...


class ReadModel(Protocol[E]):
    """What answers show of one kind of owned entity, read without what they
    never show (no secret is opened). `get` raises NotFound as the
    repository's does; nothing read is held for a write."""

    def get(self, owner_id: int, entity_id: int) -> E: ...

    def find(self, owner_id: int, query: ListQuery) -> tuple[int, list[E]]:
        """The number of matching entities, and the requested page of them."""
        ...


class UserRepository(Protocol):
    def add(self, user: User) -> User:
        """Raises Conflict when the username is taken."""
        ...

    def get(self, user_id: int) -> User: ...

    def by_username(self, username: str) -> User | None: ...

    def delete(self, user_id: int) -> None: ...


class LoginFailureRepository(Protocol):
    """Failed logins, as seconds since the epoch, kept where every instance
    of the service sees them."""

    def add(self, username: str, at: float) -> None: ...

    def since(self, username: str, moment: float) -> list[float]:
        """The failures of `username` after `moment`, oldest first."""
        ...

    def forget(self, before: float) -> None:
        """Drop every failure at or before `before`: those of names never
        tried again too, so failed logins cannot grow storage without end."""
        ...


class MigrationRepository(Repository[Migration], Protocol):
    def update_if(self, migration: Migration, expected: Sequence[MigrationState]) -> Migration:
        """Store `migration` only while the stored state is one of `expected`
        (a compare-and-set); raise Conflict otherwise. Storage also refuses a
        second running migration into one target."""
        ...

    def running(self, instance_ids: Collection[str | None] | None = None) -> list[Migration]:
        """Every running migration, of every owner, in id order; only those
        carried by one of `instance_ids` when given."""
        ...

    def any_queued(self) -> bool:
        """Whether any copy waits for a slot (a read that locks nothing)."""
        ...

    def next_queued(self, busy_machines: Collection[int], *, simulated: bool = False) -> Migration | None:
        """The waiting copy to take next (cutovers first, then the one asked
        for first) among real copies (into targets with a host) whose source
        and host are not among `busy_machines` (workload ids), or with
        `simulated` among simulated ones; read to be taken: locked until the
        commit, passed over by other instances taking copies at once."""
        ...

    def queue_position(self, migration: Migration) -> int | None:
        """1 for the waiting copy taken next; None when not waiting."""
        ...

    def due(self, now: datetime) -> list[tuple[int, int]]:
        """(owner, id) of the warm migrations between syncs whose next sync or
        cutover is due at `now` (a read that locks nothing)."""
        ...

    def running_instances(self) -> set[str | None]:
        """The instances carrying running migrations (None: not recorded)."""
        ...

    def count_in_state(self, state: MigrationState) -> int:
        """How many migrations, of every owner, are in `state`: a count, not a read of rows."""
        ...


class EventRepository(Protocol):
    """Events are only ever appended, each with a new id greater than any
    before it; they go when their migration is deleted. Ids become visible in
    order: once an event is seen, no event of a smaller id appears later."""

    def append(self, event: Event) -> Event:
        """Raises Conflict when the event's migration is not its owner's."""
        ...

    def find(self, owner_id: int, migration_id: int, query: ListQuery) -> tuple[int, list[Event]]:
        """The events of one migration matching the query (filter: `kind`)."""
        ...

    def after(self, owner_id: int | None, event_id: int, limit: int) -> list[Event]:
        """Up to `limit` events with ids above `event_id`, in id order: of one
        owner, or of every owner when `owner_id` is None."""
        ...

    def last_id(self) -> int:
        """The greatest id of any event stored; 0 when there is none."""
        ...


class UnitOfWork(Protocol):
    """One transaction. Leaving the `with` block without `commit()` rolls back."""

    @property
    def users(self) -> UserRepository: ...

    @property
    def credentials(self) -> Repository[Credentials]: ...

    @property
    def credentials_summaries(self) -> ReadModel[CredentialsSummary]:
        """The credentials as answers show them: no password or key opened."""
        ...

    @property
    def mount_points(self) -> Repository[MountPoint]: ...

    @property
    def workloads(self) -> Repository[Workload]: ...

    @property
    def migration_targets(self) -> Repository[MigrationTarget]: ...

    @property
    def migrations(self) -> MigrationRepository: ...

    @property
    def waves(self) -> Repository[Wave]:
        """Storage refuses a migration in two waves (Conflict) and a delete
        of a migration still in a wave; a deleted wave releases its members."""
        ...

    @property
    def events(self) -> EventRepository: ...

    @property
    def login_failures(self) -> LoginFailureRepository: ...

    def __enter__(self) -> UnitOfWork: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def commit(self) -> None: ...


@attrs.frozen
class Instance:
    """A service instance sharing storage with others: it holds a lease on
    its entry in the storage's register while it lives."""

    id: str
    host: str
    pid: int
    lease_seconds: float

    @classmethod
    def this_process(cls, lease_seconds: float) -> Instance:
        return cls(uuid.uuid4().hex, socket.gethostname(), os.getpid(), lease_seconds)


class InstanceRegistry(Protocol):
    """The register of the instances sharing a storage. Times are seconds since
    the epoch: instances on several machines compare them."""

    def register(self, instance: Instance, now: float) -> None:
        """Record the instance with a fresh lease and take its lock."""
        ...

    def renew(self, instance: Instance, now: float) -> None:
        """Extend the lease (recording the instance again if it was dropped)."""
        ...

    def deregister(self, instance: Instance) -> None: ...

    def gone(self, candidates: Collection[str | None], now: float) -> set[str | None]:
        """Those of `candidates` that are not live instances (None never is)."""
        ...

    def live(self, now: float) -> int:
        """How many instances are live."""
        ...


class Storage(Protocol):
    @property
    def reads_never_wait(self) -> bool:
        """Whether a unit with `write=False` never waits for a writer, so that
        a caller may run short reads on an event loop's own thread."""
        ...

    def instance_registry(self) -> InstanceRegistry:
        """The register of the service instances sharing this storage."""
        ...

    def write_executor(self) -> Executor | None:
        """A new executor for write use cases, which the caller shuts down
        (say, one thread committing many together); None: any thread will do."""
        ...

    def unit_of_work(self, *, write: bool = True, undo_nested: bool = True) -> UnitOfWork:
        """A new transaction; `write=False` promises it only reads, which lets
        storage run it alongside writers. `undo_nested=False` promises the
        caller gives up the whole unit at the first failure inside it, so a
        unit nested in it (or a refused write) need not be undone alone:
        storage may skip that cost, and then may tell a failure inside only
        as its own, and refuses to commit a unit in which something failed
        or a nested unit was left without commit."""
        ...

    def check(self) -> None:
        """Raise when storage does not answer."""
        ...

    def close(self) -> None: ...


class Runner(Protocol):
    """Carries out the copy of a migration the core has just started."""

    @property
    def instance_id(self) -> str | None:
        """The service instance this runner belongs to, recorded with each run
        it starts (None: none, as in a program that embeds the core)."""
        ...

    def launch(self, job: CopyJob) -> None:
        """Carry out the copy of a run just started (and committed), from
        another thread or in this one; raise when it cannot be taken."""
        ...

    def cancel(self, migration_id: int) -> None:
        """Stop the copy of a migration the core has just cancelled, promptly."""
        ...

    def queued(self) -> None:
        """A copy was queued (a sync, a cutover): take it when there is room."""
        ...
