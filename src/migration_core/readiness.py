"""Readiness before a run or a wave (SPEC 2.11): the checks that say what
would stop a migration, each in words a user can act on, made with one login
to each machine however many migrations share it (a wave's landing host is
one login), a bounded number of machines at a time. Nothing is written on
the machines; what was found is kept (a migration's `readiness`, a
workload's `last_check`) with a `preflight` event on each migration. A
readiness check never blocks a run: the run checks again."""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import TypeVar

import attrs

from .entities import (
    EventKind,
    MachineCheck,
    Migration,
    MigrationState,
    Mode,
    OperatingSystem,
    Readiness,
    Workload,
    system_volume,
    volume_key,
)
from .errors import Conflict, InvalidInput, NotFound
from .events import append, event
from .machines import (
    HOST_TOOLS,
    SOURCE_TOOLS,
    DiscoveryReport,
    MachineAddress,
    Machines,
    MachineUnreachable,
    PlaceSeen,
    Surveyed,
    SurveyQuestions,
    clock_or_now,
    discover_volumes,
    fingerprint,
    remember_contact,
)
from .ports import Clock, ListQuery, Storage, UnitOfWork

T = TypeVar("T")
R = TypeVar("R")

# Free space a host needs beyond the bytes a run would send.
SPACE_MARGIN = 0.10


class Check(str, enum.Enum):
    """The checks, in the order they are answered."""

    SOURCE_LOGIN = "source_login"
    SOURCE_OS = "source_os"
    SOURCE_TOOLS = "source_tools"
    HOST_TOOLS = "host_tools"
    VOLUMES = "volumes"
    HOST_LOGIN = "host_login"
    HOST_ROOT = "host_root"
    HOST_SPACE = "host_space"
    SYSTEM_VOLUME = "system_volume"
    TARGET_FREE = "target_free"
    HOOKS = "hooks"


@attrs.frozen
class CheckResult:
    check: Check
    ok: bool
    message: str


@attrs.frozen
class MigrationReadiness:
    migration_id: int
    checks: tuple[CheckResult, ...]

    @property
    def ready(self) -> bool:
        return all(result.ok for result in self.checks)

    @property
    def failed(self) -> tuple[str, ...]:
        return tuple(result.check.value for result in self.checks if not result.ok)


@attrs.frozen
class WaveReadiness:
    migrations: tuple[MigrationReadiness, ...]

    @property
    def ready(self) -> int:
        return sum(1 for one in self.migrations if one.ready)

    @property
    def not_ready(self) -> int:
        return len(self.migrations) - self.ready


def size_text(count: int) -> str:
    """Bytes as a person reads them: 1.5 GiB, 300 MiB, 12 KiB, 512 B."""
    amount = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if amount < 1024 or unit == "TiB":
            return f"{count} B" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    raise AssertionError("unreachable")


def place_of(root: str, name: str) -> str:
    """Where volume `name` lies below `root` (`/` is the root itself)."""
    return root if name == "/" else root.rstrip("/") + name


def bounded(work: Callable[[T], R], items: Sequence[T], at_once: int) -> list[R]:
    """`work` on each item, at most `at_once` at a time, the results in order."""
    if len(items) <= 1:
        return [work(item) for item in items]
    with ThreadPoolExecutor(max_workers=max(1, min(at_once, len(items))), thread_name_prefix="preflight") as pool:
        return list(pool.map(work, items))


# -- what is read from storage before any machine is asked ------------------


@attrs.frozen
class _Plan:
    """One migration's part in a readiness check, as storage holds it."""

    migration: Migration
    source: Workload
    volume_names: tuple[str, ...]  # the selected volumes still in the source, in its order
    gone: tuple[int, ...]  # selected mount points no longer in the source
    host: Workload | None
    root: str | None  # the target's root on its host
    busy_with: tuple[int, ...]  # other migrations running into the target

    @property
    def simulated(self) -> bool:
        return self.host is None


@attrs.frozen
class _Machine:
    workload: Workload
    address: MachineAddress
    questions: SurveyQuestions


def _plans(uow: UnitOfWork, owner_id: int, migration_ids: Iterable[int]) -> list[_Plan]:
    plans = []
    for migration_id in migration_ids:
        migration = uow.migrations.peek(owner_id, migration_id)
        source = uow.workloads.peek(owner_id, migration.source_id)
        names = tuple(
            uow.mount_points.peek(owner_id, i).name
            for i in source.mount_point_ids
            if i in migration.selected_mount_point_ids
        )
        gone = tuple(i for i in migration.selected_mount_point_ids if i not in source.mount_point_ids)
        target = uow.migration_targets.peek(owner_id, migration.migration_target_id)
        host = None if target.host_id is None else uow.workloads.peek(owner_id, target.host_id)
        _, running = uow.migrations.find(
            owner_id,
            ListQuery(filters={"migration_target_id": target.id, "state": MigrationState.RUNNING.value}, limit=1000),
        )
        busy_with = tuple(other.id for other in running if other.id != migration.id)
        plans.append(_Plan(migration, source, names, gone, host, target.root, busy_with))
    return plans


def _machines(uow: UnitOfWork, owner_id: int, plans: Sequence[_Plan]) -> dict[int, _Machine]:
    """Each machine the real migrations reach, once, with every question any of them asks it."""
    machines: dict[int, _Machine] = {}

    def ask(workload: Workload, questions: SurveyQuestions) -> None:
        known = machines.get(workload.id)
        if known is None:
            credentials = uow.credentials.peek(owner_id, workload.credentials_id)
            machines[workload.id] = _Machine(workload, MachineAddress.of(workload, credentials), questions)
        else:
            machines[workload.id] = attrs.evolve(known, questions=known.questions.joined(questions))

    for plan in plans:
        if plan.host is None or plan.root is None:
            continue
        warm = plan.migration.mode is Mode.WARM
        pre, post = plan.migration.pre_cutover, plan.migration.post_cutover
        ask(
            plan.source,
            SurveyQuestions(
                tools=SOURCE_TOOLS,
                directories=tuple(place_of(plan.source.root, name) for name in plan.volume_names),
                hooks=(pre,) if warm and pre else (),
            ),
        )
        ask(
            plan.host,
            SurveyQuestions(
                tools=HOST_TOOLS,
                # What the places hold already: a re-run sends only what differs.
                directories=tuple(place_of(plan.root, name) for name in plan.volume_names),
                places=(plan.root,),
                hooks=(post,) if warm and post else (),
            ),
        )
    return machines


# -- asking the machines --------------------------------------------------


@attrs.frozen
class _Answer:
    """A machine's survey, or why it could not be made."""

    surveyed: Surveyed | None
    failure: str | None = None


def _ask(machines: Machines, machine: _Machine, *, refuse: bool) -> _Answer:
    try:
        return _Answer(machines.survey(machine.address, machine.questions))
    except MachineUnreachable as failure:
        return _Answer(None, failure.message)
    except Conflict as refused:  # outside the allowed networks: nothing was sent
        if refuse:
            raise
        return _Answer(None, refused.message)


# -- the checks of one migration ------------------------------------------


def _not_checked(check: Check, because: str) -> CheckResult:
    return CheckResult(check, False, f"Not checked: {because}.")


def _login(check: Check, role: str, machine: _Machine, answer: _Answer) -> CheckResult:
    if answer.surveyed is None:
        return CheckResult(check, False, f"The {role}, workload {machine.workload.id}: {answer.failure}")
    seen = answer.surveyed
    return CheckResult(
        check,
        True,
        f"Logged in to {seen.hostname or machine.address.ip} ({machine.address.ip} port {machine.address.port})"
        f" as {machine.address.username}; host key {fingerprint(seen.host_key)}.",
    )


def _tools(check: Check, role: str, wanted: Sequence[str], answer: _Answer) -> CheckResult:
    if answer.surveyed is None:
        return _not_checked(check, f"the {role} could not be logged in to")
    missing = [tool for tool in wanted if not answer.surveyed.tools.get(tool, False)]
    if missing:
        return CheckResult(
            check,
            False,
            f"The {role} lacks {', '.join(missing)} on the login's PATH: a copy runs"
            f" {'it' if len(missing) == 1 else 'them'} there. Install {'it' if len(missing) == 1 else 'them'}"
            " or fix the PATH.",
        )
    return CheckResult(check, True, f"The {role} has every program a copy runs ({', '.join(wanted)}).")


def _source_os(plan: _Plan, answer: _Answer) -> CheckResult:
    if plan.source.os is OperatingSystem.WINDOWS:
        return CheckResult(
            Check.SOURCE_OS, False, f"Workload {plan.source.id} is recorded as windows: only Linux is copied for real."
        )
    if answer.surveyed is None:
        return _not_checked(Check.SOURCE_OS, "the source could not be logged in to")
    if answer.surveyed.os is not OperatingSystem.LINUX:
        return CheckResult(
            Check.SOURCE_OS,
            False,
            f"The source runs {answer.surveyed.system or 'an unknown system'}, not Linux:"
            " only Linux machines are copied for real.",
        )
    return CheckResult(Check.SOURCE_OS, True, "The source runs Linux.")


def _below(name: str, above: str) -> bool:
    """Whether volume `name` lies below volume `above` (every other one below `/`)."""
    return name != above and (above == "/" or name.startswith(above.rstrip("/") + "/"))


def own_bytes(names: Sequence[str], root: str, seen: Surveyed) -> dict[str, int | None]:
    """Each volume's used bytes without the volumes selected below it, as a
    copy sends them (SPEC 2.8): `du -x` of a directory counts one below it
    when both are on one filesystem, so the outermost of those are taken
    off; one on a filesystem of its own was never counted. None: unread."""
    own: dict[str, int | None] = {}
    for name in names:
        path = place_of(root, name)
        used = seen.directories.get(path)
        if used is not None:
            nested = [other for other in names if _below(other, name)]
            for outer in (n for n in nested if not any(_below(n, m) for m in nested)):
                inner = place_of(root, outer)
                if seen.directories.get(inner) is not None and seen.devices.get(inner) == seen.devices.get(path):
                    used -= seen.directories[inner] or 0
        own[name] = None if used is None else max(0, used)
    return own


def _volume_sizes(plan: _Plan, answer: _Answer) -> tuple[CheckResult, dict[str, int] | None]:
    """The `volumes` check, and each selected volume's used bytes when it passed."""
    if plan.gone:
        ids = ", ".join(map(str, plan.gone))
        return CheckResult(
            Check.VOLUMES,
            False,
            f"Selected mount point(s) {ids} are no longer in the storage of workload {plan.source.id}:"
            " edit the migration's selection.",
        ), None
    if answer.surveyed is None:
        return _not_checked(Check.VOLUMES, "the source could not be logged in to"), None
    sizes: dict[str, int] = {}
    wrong = []
    own = own_bytes(plan.volume_names, plan.source.root, answer.surveyed)
    for name in plan.volume_names:
        used = own[name]
        if used is None:
            wrong.append(f"{name} ({place_of(plan.source.root, name)})")
        else:
            sizes[name] = used
    if wrong:
        return CheckResult(
            Check.VOLUMES,
            False,
            f"Not a directory under the source's root {plan.source.root}, or not readable by the login:"
            f" {', '.join(wrong)}. Discover the workload's volumes again, or fix its root.",
        ), None
    listed = ", ".join(f"{name} {size_text(size)}" for name, size in sizes.items())
    return CheckResult(
        Check.VOLUMES, True, f"Every selected volume is a directory under {plan.source.root}: {listed}."
    ), sizes


def _host_root(plan: _Plan, machine: _Machine, answer: _Answer) -> CheckResult:
    if answer.surveyed is None:
        return _not_checked(Check.HOST_ROOT, "the host could not be logged in to")
    assert plan.root is not None
    seen: PlaceSeen | None = answer.surveyed.places.get(plan.root)
    user = machine.address.username
    if seen is None:
        return CheckResult(Check.HOST_ROOT, False, f"The host did not say what is at {plan.root}.")
    if not seen.directory:
        return CheckResult(
            Check.HOST_ROOT,
            False,
            f"{seen.examined} on the host is not a directory: the root {plan.root} cannot be there.",
        )
    if not seen.writable:
        return CheckResult(
            Check.HOST_ROOT,
            False,
            f"The host's login {user!r} may not write {seen.examined}: a copy writes under {plan.root}.",
        )
    if seen.exists:
        return CheckResult(Check.HOST_ROOT, True, f"{plan.root} exists on the host and {user!r} may write there.")
    return CheckResult(
        Check.HOST_ROOT, True, f"{plan.root} is not on the host yet; {user!r} may make it in {seen.examined}."
    )


def _host_space(plan: _Plan, answer: _Answer, root: CheckResult, sizes: dict[str, int] | None) -> CheckResult:
    if answer.surveyed is None:
        return _not_checked(Check.HOST_SPACE, "the host could not be logged in to")
    if not root.ok:
        return _not_checked(Check.HOST_SPACE, "the target's root cannot be written (host_root)")
    if sizes is None:
        return _not_checked(Check.HOST_SPACE, "the selected volumes' sizes are not known (volumes)")
    assert plan.root is not None
    seen = answer.surveyed.places[plan.root]
    if seen.free is None:
        return CheckResult(
            Check.HOST_SPACE, False, f"The free space under {seen.examined} could not be read on the host."
        )
    held = own_bytes(list(sizes), plan.root, answer.surveyed)
    # What the places hold already is not sent again (an estimate: a file
    # that changed needs room for its new copy until the swap).
    send = sum(max(0, used - (held[name] or 0)) for name, used in sizes.items())
    needed = int(send * (1 + SPACE_MARGIN))
    words = (
        f"{size_text(seen.free)} free under {seen.examined},"
        f" {size_text(needed)} needed ({size_text(send)} to send plus 10%)"
    )
    if seen.free < needed:
        return CheckResult(Check.HOST_SPACE, False, f"Not enough space on the host: {words}.")
    return CheckResult(Check.HOST_SPACE, True, f"{words[0].upper()}{words[1:]}.")


def _system_volume(plan: _Plan, source: _Answer | None = None) -> CheckResult:
    """`source`: what the source's login found, which says its os when
    storage knows none (as the run will then know it); None for a simulated
    copy, which reaches no machine and takes an unknown os for Windows."""
    learnt = None if source is None or source.surveyed is None else source.surveyed.os
    if plan.source.os is None and source is not None and source.surveyed is None:
        return _not_checked(Check.SYSTEM_VOLUME, "the source's system is unknown, and it could not be logged in to")
    system = system_volume(plan.source.os or learnt)
    if any(volume_key(name) == volume_key(system) for name in plan.volume_names):
        return CheckResult(Check.SYSTEM_VOLUME, True, f"The system volume {system} is selected.")
    return CheckResult(
        Check.SYSTEM_VOLUME, False, f"The system volume {system} is not selected: a migration may not run without it."
    )


def _target_free(plan: _Plan) -> CheckResult:
    target = plan.migration.migration_target_id
    if plan.busy_with:
        others = ", ".join(map(str, plan.busy_with))
        return CheckResult(
            Check.TARGET_FREE, False, f"Migration {others} is running into target {target}: wait for it to end."
        )
    return CheckResult(Check.TARGET_FREE, True, f"No other migration is running into target {target}.")


def _hooks(plan: _Plan, source: _Answer, host: _Answer) -> CheckResult:
    problems = []
    checked = []
    for name, command, role, answer in (
        ("pre_cutover", plan.migration.pre_cutover, "source", source),
        ("post_cutover", plan.migration.post_cutover, "host", host),
    ):
        if not command:
            continue
        if answer.surveyed is None:
            problems.append(f"{name} not checked: the {role} could not be logged in to")
            continue
        error = answer.surveyed.hooks.get(command)
        if error is None:
            checked.append(name)
        else:
            problems.append(f"{name} does not parse on the {role}: {error}")
    if problems:
        return CheckResult(Check.HOOKS, False, "; ".join(problems) + ".")
    if not checked:
        return CheckResult(Check.HOOKS, True, "No hooks to check.")
    return CheckResult(Check.HOOKS, True, f"{' and '.join(checked)} parse{'s' if len(checked) == 1 else ''} (sh -n).")


def _checks(plan: _Plan, machines: Mapping[int, _Machine], answers: Mapping[int, _Answer]) -> MigrationReadiness:
    if plan.simulated:
        # A simulated copy reaches no machine: what needs none is all there is to check.
        return MigrationReadiness(plan.migration.id, (_system_volume(plan), _target_free(plan)))
    assert plan.host is not None
    source, host = answers[plan.source.id], answers[plan.host.id]
    volumes, sizes = _volume_sizes(plan, source)
    root = _host_root(plan, machines[plan.host.id], host)
    results = [
        _login(Check.SOURCE_LOGIN, "source", machines[plan.source.id], source),
        _source_os(plan, source),
        _tools(Check.SOURCE_TOOLS, "source", SOURCE_TOOLS, source),
        _tools(Check.HOST_TOOLS, "host", HOST_TOOLS, host),
        volumes,
        _login(Check.HOST_LOGIN, "host", machines[plan.host.id], host),
        root,
        _host_space(plan, host, root, sizes),
        _system_volume(plan, source),
        _target_free(plan),
    ]
    if plan.migration.mode is Mode.WARM:
        results.append(_hooks(plan, source, host))
    return MigrationReadiness(plan.migration.id, tuple(results))


# -- keeping what was found ---------------------------------------------


def _survey_check(at: datetime, machine: _Machine, answer: _Answer) -> MachineCheck:
    if answer.surveyed is None:
        return MachineCheck(at, False, answer.failure or "It could not be reached.")
    seen = answer.surveyed
    missing = [tool for tool in machine.questions.tools if not seen.tools.get(tool, False)]
    name = seen.hostname or machine.address.ip
    if missing:
        return MachineCheck(at, False, f"Logged in to {name}, but it lacks {', '.join(missing)}.")
    return MachineCheck(at, True, f"Logged in to {name} as {machine.address.username} (readiness check).")


def _keep(
    storage: Storage,
    clock: Clock,
    owner_id: int,
    actor: int | None,
    machines: Mapping[int, _Machine],
    answers: Mapping[int, _Answer],
    results: Sequence[MigrationReadiness],
) -> None:
    """Each machine's last check, each migration's readiness and its
    `preflight` event, in one transaction."""
    now = clock.now()
    with storage.unit_of_work() as uow:
        for workload_id, machine in machines.items():
            answer = answers[workload_id]
            surveyed = answer.surveyed
            remember_contact(
                uow,
                machine.workload,
                _survey_check(now, machine, answer),
                None if surveyed is None else surveyed.host_key,
                None if surveyed is None else surveyed.os,
            )
        events = []
        for result in results:
            migration = uow.migrations.get(owner_id, result.migration_id)
            uow.migrations.update(attrs.evolve(migration, readiness=Readiness(now, result.ready, result.failed)))
            events.append(
                event(migration, EventKind.PREFLIGHT, now, actor=actor, ready=result.ready, failed=list(result.failed))
            )
        append(uow, events)
        uow.commit()


def _check_migrations(
    storage: Storage,
    machines: Machines,
    owner_id: int,
    migration_ids: Sequence[int],
    *,
    actor: int | None,
    clock: Clock | None,
    at_once: int,
    refuse: bool,
) -> list[MigrationReadiness]:
    with storage.unit_of_work(write=False) as uow:
        plans = _plans(uow, owner_id, migration_ids)
        reached = _machines(uow, owner_id, plans)
    order = list(reached.values())
    found = bounded(lambda machine: _ask(machines, machine, refuse=refuse), order, at_once)
    answers = {machine.workload.id: answer for machine, answer in zip(order, found)}
    results = [_checks(plan, reached, answers) for plan in plans]
    _keep(storage, clock_or_now(clock), owner_id, actor, reached, answers, results)
    return results


def check_readiness(
    storage: Storage,
    machines: Machines,
    owner_id: int,
    migration_id: int,
    *,
    actor: int | None = None,
    clock: Clock | None = None,
) -> MigrationReadiness:
    """Check whether a migration could run now (SPEC 2.11): each check in
    order with its message. An address outside the allowed networks raises
    Conflict; a machine that cannot be reached fails its login check."""
    (result,) = _check_migrations(
        storage, machines, owner_id, [migration_id], actor=actor, clock=clock, at_once=2, refuse=True
    )
    return result


def check_wave_readiness(
    storage: Storage,
    machines: Machines,
    owner_id: int,
    wave_id: int,
    *,
    at_once: int,
    actor: int | None = None,
    clock: Clock | None = None,
) -> WaveReadiness:
    """Check every migration of a wave, each machine logged in to once, at
    most `at_once` machines at a time. A machine outside the allowed networks
    fails its login check with the refusal, the others are checked."""
    with storage.unit_of_work(write=False) as uow:
        members = sorted(uow.waves.peek(owner_id, wave_id).migration_ids)
    results = _check_migrations(
        storage, machines, owner_id, members, actor=actor, clock=clock, at_once=at_once, refuse=False
    )
    return WaveReadiness(tuple(results))


def discover_workloads(
    storage: Storage,
    machines: Machines,
    owner_id: int,
    workload_ids: Sequence[int],
    *,
    at_once: int,
    dry_run: bool = False,
    clock: Clock | None = None,
) -> list[tuple[int, DiscoveryReport]]:
    """Discover many workloads' volumes at once (SPEC 2.11), at most
    `at_once` at a time: each one's discovery by workload id, in the order
    given. One that may not be discovered (windows, outside the allowed
    networks) is a report with `ok` false and the reason."""
    ids = list(dict.fromkeys(workload_ids))
    with storage.unit_of_work(write=False) as uow:
        unknown = []
        for workload_id in ids:
            try:
                uow.workloads.peek(owner_id, workload_id)
            except NotFound:
                unknown.append(workload_id)
    if unknown:
        raise InvalidInput.field("workloads", f"No such workload: {', '.join(map(str, unknown))}.")

    def discover(workload_id: int) -> DiscoveryReport:
        try:
            return discover_volumes(storage, machines, owner_id, workload_id, dry_run=dry_run, clock=clock)
        except Conflict as refused:
            return DiscoveryReport(ok=False, message=refused.message)

    return list(zip(ids, bounded(discover, ids, at_once)))


def wave_sources(storage: Storage, owner_id: int, wave_id: int) -> list[int]:
    """The sources of a wave's migrations, each once, in the migrations' order."""
    with storage.unit_of_work(write=False) as uow:
        wave = uow.waves.peek(owner_id, wave_id)
        sources = [uow.migrations.peek(owner_id, i).source_id for i in sorted(wave.migration_ids)]
    return list(dict.fromkeys(sources))
